"""The ``synthetic_landmarks`` demo dataset: real photographs bundled with scikit-image are the "landmarks",
and every image is a synthetic view of one of them (random homography, crop, scale, rotation, photometric
change, occlusion) or a distractor.

The training split also holds *collage* landmarks: canonical views composed of patches cut from the
training photos (and the textures), viewed the same way. Nine photos are too few landmarks to learn
anything that carries over to unseen ones; collages add as many training landmarks as wanted without
touching a validation or test photo.

Pure numpy generation, deterministic by seed, offline (only the photos that ship inside the scikit-image
wheel are used). The TFDS builder in :mod:`remap_jax.data.builders.synthetic_landmarks` stores what
:func:`remap_jax.data.synthetic.dataset.generate` returns.

Ground truth follows the revisited Oxford form: the difficulty of an index image for a query of the same
landmark comes from the *visibility* of the landmark's canonical view in it (the fraction of canonical-view
points that land inside the image and are not occluded): ``easy`` >= ``easy_visibility``, ``junk`` <
``junk_visibility``, ``hard`` in between (strong rotation or heavy photometric change also makes an
otherwise easy view hard). Train, validation and test landmarks are disjoint.

The ``hard`` config (``NAMED_CONFIGS["hard"]``) cuts every photo into a grid of *cells*; a few textured cells
per photo are landmarks, the other cells are *material* for that split only (backgrounds, occluders,
look-alike distractors, and the training collages), so that no two landmarks share a pixel and no
validation or test pixel reaches the training split. Its views are rendered with the ``strong`` style:
wider scale / viewpoint / rotation ranges, more occluders, backgrounds cut from the material. Cells of one
photo look alike (same colours, texture, subject), which a pretrained network does not separate by itself.
Since builder version 1.3.0 its training photos are cut into a finer grid (``train_photo_cells``) whose
textured cells are all landmarks: about 100 sibling training landmarks, so that mining finds negatives as
hard as the test split's (the test and validation splits are the same records as in 1.2.0).

Modules: :mod:`.config` (:class:`SyntheticConfig`, :data:`NAMED_CONFIGS`), :mod:`.photos` (the photos, their
cells and the landmark ids of a config), :mod:`.draw` (warps, backgrounds, occluders, photometric change),
:mod:`.render` (canonical landmark images, views, distractors), :mod:`.dataset` (:func:`generate` and its
training / test parts).
"""
