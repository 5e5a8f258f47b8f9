"""TFDS dataset builders for retrieval benchmarks and training sets (array_record format, random access).

Builders (registered with TFDS when their module is imported; :func:`remap_jax.data.records.get_builder`
imports them before looking a name up):

* :mod:`.revisited`: ``roxford5k``, ``rparis6k``: revisited Oxford / Paris. Splits ``index`` (database,
  in ``imlist`` order) and ``query`` (70 queries, image cropped to the ground-truth box; the original JPEG is
  kept in ``original_image``). Ground truth (imlist, qimlist, per-query easy/hard/junk/bbx) is in
  ``info.metadata`` and in the query records. ``revisitop1m``: the 1M distractors (split ``index``); configs
  ``full`` or a prefix of the 100 tars.
* :mod:`.training_sets`: ``sfm120k``: retrieval-SfM-120k (splits ``train`` and ``val`` with cluster labels
  and query/positive pairs). ``gldv2_clean``: Google Landmarks v2 clean train set (split ``train``, landmark
  labels, positive pairs between images of the same landmark); configs ``full`` or a prefix of the 500 tars.
* :mod:`.synthetic_landmarks`: ``synthetic_landmarks``, the offline demo dataset
  (:mod:`remap_jax.data.synthetic`).
* :mod:`.user_images`: ``user_images`` (:class:`~.user_images.UserImages`, not registered: built through
  ``folder:``/``csv:``/``gnd:`` names of :mod:`remap_jax.data.loaders`): your own images, one config per
  listing digest.

Every builder first looks for its files in ``manual_dir`` (default ``<data_dir>/downloads/manual``) and
downloads the missing ones from the official location otherwise (:mod:`.base`). Labels and query/positive
pairs of the training sets live in ``info.metadata`` so that loaders need not read the images to get them.

These modules use ``epath`` for file access (TFDS's builder tests forbid ``os``/``open`` in builders).
"""
