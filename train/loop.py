"""The training job: `train_and_evaluate(config, workdir)` (the shape of flax `examples/imagenet`).

Read top to bottom: set up (data, model, optimiser, mesh, describers) -> resume -> evaluate the initial model
-> per epoch: mine hard negatives, train on the tuples, validate, export the best, checkpoint -> evaluate the
exported model. The parts live in their own modules: `train.build` (spec, model, initial variables),
`train.optim`, `train.step` (the sharded step), `train.input` (training images), `train.checkpoints`.
Describing images (mining, validation, test evaluation) goes through `remap_jax.Extractor`, the same code
`remap-extract` and `Extractor.from_checkpoint` of the export use.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from remap_jax.data.images import ImageList
from remap_jax.describe.extractor import Extractor
from remap_jax.describe.programs import local_mesh
from remap_jax.evaluation.benchmark import run_eval, validation_map
from remap_jax.evaluation.metrics import format_revisited_table, main_setup
from remap_jax.fit import mining
from remap_jax.model import load_exported, model_from_config, save_exported
from remap_jax.runtime import atomic
from remap_jax.runtime.distributed import host_copy, local_rows, sync_processes
from remap_jax.search.rerank import SuperGlobal
from train.build import check_eval_shapes, initial_variables, initialise_head_from_config, model_spec
from train.checkpoints import Checkpoints, MetricWriter
from train.input import ImageSource
from train.optim import frozen_mask, make_optimizer
from train.step import (
    all_finite,
    create_train_state,
    make_mesh,
    make_train_step,
    pad_to_multiple,
    to_global_batch,
)
from train.validate import validate_config


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def load_data(config: ml_collections.ConfigDict, training_set=None, test_set=None):
    """(training set, test set or None) named by the config, unless given."""
    from remap_jax.data import load_test_set, load_training_set

    if training_set is None:
        training_set = load_training_set(config.dataset, data_dir=config.data_dir or None)
    if test_set is None and config.test_dataset:
        test_set = load_test_set(config.test_dataset, data_dir=config.data_dir or None)
    if len(np.asarray(training_set.qidx)) == 0:
        raise ValueError(f"dataset {config.dataset!r}: no (query, positive) pairs to train on")
    return training_set, test_set


def make_describers(model, spec, variables, config) -> tuple[Extractor, Extractor]:
    """(mining describer: training images squashed to image_size, evaluation describer: test_image_size with
    the portrait transpose). Both are the exported model's extractor (folded BatchNorm) given a spec. They run
    on this process's devices; with several processes each describes its share and gathers the rest."""
    eval_model = model_from_config(spec, fold_bn=True) if spec else model
    mesh = local_mesh()
    common = dict(batch_size=pad_to_multiple(config.describe_batch_size, mesh.size),
                  workers=config.num_workers, mesh=mesh)
    mine = Extractor(eval_model, variables, image_size=config.image_size, resize="exact", **common)
    test = Extractor(eval_model, variables, image_size=config.test_image_size, resize="fixed", **common)
    return mine, test


def mine_epoch(describer: Extractor, source: ImageSource, training_set, config, epoch: int, *,
               progress=False):
    """Hard-negative tuples for `epoch`: (Q, 2 + N) image indices, plus mining statistics. Every process gets
    the same descriptors (the describer gathers them) and so the same tuples; the pool's similarities are
    scored on this process's devices, the pool sharded over them."""
    labels = np.asarray(training_set.labels)
    qidx, pidx = np.asarray(training_set.qidx), np.asarray(training_set.pidx)
    pair_ids, pool_ids = mining.sample_epoch(config.seed, epoch, len(qidx), len(labels),
                                             config.queries_per_epoch, config.pool_size)
    queries = qidx[pair_ids]
    qdesc = describer(ImageList(source.read, queries), progress=progress)
    pdesc = describer(ImageList(source.read, pool_ids), progress=progress)
    cand, sims = mining.negative_candidates(qdesc, pdesc, labels[queries], labels[pool_ids],
                                            config.mining_candidates,
                                            pool_sharding=NamedSharding(local_mesh(), P("data")))
    neg_pos = mining.select_negatives(cand, sims, labels[pool_ids], config.num_negatives,
                                      distinct_labels=config.distinct_negative_landmarks)
    tuples = mining.build_tuples(queries, pidx[pair_ids], pool_ids[neg_pos])
    # how hard the epoch's tuples are: squared distance query -> hardest negative
    return tuples, {"mining/d_hardest_neg": float(np.mean(2.0 - 2.0 * sims[:, 0])),
                    "mining/pool_images": float(len(pool_ids))}


class _Status:
    """Reports describe progress (mining, validation) on the training bar's postfix: one bar per job."""

    def __init__(self, bar):
        self.bar = bar

    def counter(self, label: str, total: int) -> Callable[[int], None]:
        done = [0]

        def update(n: int) -> None:
            done[0] += n
            self.bar.set_postfix_str(f"{label} {done[0]}/{total} img", refresh=True)

        return update


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, model=None, training_set=None,
                       test_set=None, step_hook: Callable[[int], None] | None = None,
                       export_fn: Callable[[str, dict, dict], None] | None = None) -> dict:
    """Train per `config` in `workdir` (resuming from its latest checkpoint) and evaluate.

    Args:
      config: a config from train/configs (validated here before any compute).
      workdir: checkpoints/, tensorboard/, export/ and the evaluation files go here.
      model, training_set, test_set: override what the config would build/load (a custom model needs
        `config.model.arch = ""` and an `export_fn`).
      step_hook: called with the global step after each step (tests use it to simulate a crash).
      export_fn: `(path, spec, variables)` writer of the best model; default `remap_jax.model.save_exported`.
    Returns:
      summary dict: final step, last loss, best validation mAP and test results before/after (if evaluated).
    """
    from tqdm import tqdm

    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0

    def say(msg: str) -> None:
        if is_main:
            print(msg, flush=True)

    # ---- set up: data, model, optimiser, mesh, describers
    training_set, test_set = load_data(config, training_set, test_set)
    test_rerank = SuperGlobal.parse(config.test_rerank) if config.get("test_rerank") else None
    reports = {k: s.report for k, s in (("train", training_set), ("test", test_set))
               if getattr(s, "report", None)}
    if reports and is_main:  # your own images: what was skipped and why, next to the run's other outputs
        atomic.write_json(os.path.join(workdir, "data_report.json"), reports)
    spec = model_spec(config)
    model = model if model is not None else model_from_config(spec)
    export_fn = export_fn or save_exported
    mesh = make_mesh()
    data_sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    tuples_per_epoch = min(config.queries_per_epoch, len(np.asarray(training_set.qidx)))
    steps_per_epoch = tuples_per_epoch // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"config.batch_size = {config.batch_size}: larger than the {tuples_per_epoch} "
                         f"(query, positive) pairs available per epoch")
    total_steps = steps_per_epoch * config.num_epochs
    updates_per_epoch = max(1, steps_per_epoch // config.grad_accum_steps)
    padded_batch = pad_to_multiple(config.batch_size, mesh.size)
    own_rows = local_rows(data_sharding, padded_batch)
    tuple_len = 2 + config.num_negatives

    ckpt = Checkpoints(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    fresh = ckpt.latest_step() is None
    start_config = config.copy_and_resolve_references()  # what training starts from, head initialisation too
    if config.initialise_head:
        start_config.head_init = os.path.join(workdir, "init", "head_init.npz")
    head_ready = not config.initialise_head or os.path.exists(start_config.head_init)
    variables = initial_variables(model, start_config if head_ready else config, jax.random.key(config.seed))
    check_eval_shapes(model, variables, config)
    tx, lr_schedule = make_optimizer(config, variables["params"], updates_per_epoch)
    state = jax.device_put(create_train_state(variables, tx), replicated)
    frozen = frozen_mask(config, state.params)
    train_step = make_train_step(model, tx, loss=config.loss, margin=config.margin, mesh=mesh,
                                 frozen=frozen if any(jax.tree_util.tree_leaves(frozen)) else None)
    mine_describer, test_describer = make_describers(model, spec, variables, config)
    del variables
    # encoded bytes where the set has them (large JPEGs get draft decoding), stored pixels: no EXIF rotation
    read = getattr(training_set, "read_stored", training_set.read)
    source = ImageSource(read, config.image_size, cache=config.cache_images, workers=config.num_workers,
                         exif_transpose=False)
    writer = MetricWriter(os.path.join(workdir, "tensorboard"))
    export_dir = os.path.join(workdir, "export")
    summary: dict[str, Any] = {}

    def evaluate_test(variables, name: str, title: str) -> dict:
        test_describer.set_variables(variables)
        # every process takes part in describing; process 0 writes the files
        results = run_eval(test_describer, test_set, out_dir=os.path.join(workdir, name) if is_main else None,
                           progress=is_main, rerank=test_rerank)
        if is_main:
            atomic.write_json(os.path.join(workdir, f"{name}.json"), results)
        say(f"test set {config.test_dataset!r} {title}:\n{format_revisited_table(results)}")
        return results

    def export(state) -> None:
        if is_main:
            export_fn(export_dir, spec, host_copy(state.variables()))
        sync_processes("export")  # the others read the export only once it is complete

    def save_checkpoint(step: int, meta: dict) -> None:
        if not bool(all_finite(state.params)):
            raise NonFiniteLossError(
                f"parameters are NaN/inf after step {step}; training stopped without saving them. The last "
                f"good checkpoint is step {ckpt.latest_step()} in {workdir}/checkpoints")
        ckpt.save(step, state, tuples, meta)

    # ---- resume
    meta = {"epoch": 0, "step_in_epoch": 0, "best_val_map": None, "best_step": None}
    tuples = None
    latest = ckpt.latest_step()
    if latest is not None:
        tuples_shape = (steps_per_epoch * config.batch_size, tuple_len)
        state, saved_tuples, meta = ckpt.restore(latest, state, tuples_shape)
        state = jax.device_put(state, replicated)
        if meta["step_in_epoch"] < steps_per_epoch:
            tuples = saved_tuples
        else:
            meta = {**meta, "epoch": meta["epoch"] + 1, "step_in_epoch": 0}
        say(f"resumed from {workdir}/checkpoints step {latest} (epoch {meta['epoch']}, "
            f"step {meta['step_in_epoch']} of {steps_per_epoch})")
    step = int(state.step)

    # ---- head initialisation (KL alphas + whitening) and the model training starts from, on the test set
    evaluate_start = test_set is not None and config.eval_before_training and fresh
    if config.initialise_head and fresh:
        if evaluate_start:
            plain = initial_variables(model, config, jax.random.key(config.seed))  # alpha 1, identity W
            summary["test_off_the_shelf"] = evaluate_test(plain, "eval_off_the_shelf",
                                                          "off the shelf (alpha = 1, no whitening)")
        if not head_ready:
            init_dir = os.path.dirname(start_config.head_init)
            initialise_head_from_config(config, init_dir, training_set, mesh=mesh)
            variables = initial_variables(model, start_config, jax.random.key(config.seed))
            state = jax.device_put(create_train_state(variables, tx), replicated)
            del variables
    if evaluate_start:
        title = "with the KL + whitening head (the start)" if config.initialise_head else "before training"
        summary["test_before"] = evaluate_test(state.variables(), "eval_before", title)

    # ---- epochs: mine, train, validate, export, checkpoint
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not is_main,
               dynamic_ncols=True)
    status = _Status(bar)
    window_images, window_t0 = 0, time.perf_counter()
    loss_value = float("nan")
    try:
        for epoch in range(meta["epoch"], config.num_epochs):
            start = meta["step_in_epoch"] if epoch == meta["epoch"] else 0
            if tuples is None or start == 0:
                mine_describer.set_variables(state.variables())
                images_to_describe = min(config.queries_per_epoch, len(np.asarray(training_set.qidx))) + min(
                    config.pool_size, training_set.num_images)
                tuples, stats = mine_epoch(mine_describer, source, training_set, config, epoch,
                                           progress=status.counter(f"mining {epoch + 1}", images_to_describe))
                tuples = tuples[: steps_per_epoch * config.batch_size]
                writer.write(step, stats)
            weights = np.zeros((padded_batch,), np.float32)
            weights[: config.batch_size] = 1.0
            weights = weights[own_rows]

            def batch_ids(i: int, tuples=tuples) -> np.ndarray:
                rows = tuples[i * config.batch_size:(i + 1) * config.batch_size]
                padded = np.concatenate([rows, np.repeat(rows[-1:], padded_batch - len(rows), axis=0)])
                return padded[own_rows]  # this host loads and decodes only the rows its devices hold

            pending = source.prefetch(batch_ids(start))
            for i in range(start, steps_per_epoch):
                images = pending.result()
                if i + 1 < steps_per_epoch:
                    pending = source.prefetch(batch_ids(i + 1))
                state, metrics = train_step(state, to_global_batch(images, data_sharding, padded_batch),
                                            to_global_batch(weights, data_sharding, padded_batch))
                metrics = jax.device_get(metrics)
                step += 1
                loss_value = float(metrics["loss"])
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(
                        f"loss is {loss_value} at step {step} (epoch {epoch}); training stopped. The last "
                        f"good checkpoint is step {ckpt.latest_step()} in {workdir}/checkpoints; lower the "
                        f"learning rate or check the data before resuming")
                window_images += config.batch_size * tuple_len
                bar.update(1)
                if step % config.log_every_steps == 0 or step == total_steps:
                    now = time.perf_counter()
                    lr = float(lr_schedule(step // config.grad_accum_steps))
                    scalars = {"train/loss": loss_value, "train/active_triplets": float(metrics["active"]),
                               "train/grad_norm": float(metrics["grad_norm"]), "train/lr": lr,
                               "train/images_per_s": window_images / max(now - window_t0, 1e-9),
                               "train/epoch": epoch}
                    writer.write(step, scalars)
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}",
                                    active=f"{scalars['train/active_triplets']:.2f}",
                                    img_s=f"{scalars['train/images_per_s']:.1f}")
                    window_images, window_t0 = 0, now
                if step_hook is not None:
                    step_hook(step)
                if step % config.checkpoint_every_steps == 0 and i + 1 < steps_per_epoch:
                    save_checkpoint(step, {**meta, "epoch": epoch, "step_in_epoch": i + 1})
            meta = {**meta, "epoch": epoch, "step_in_epoch": steps_per_epoch}
            val = getattr(training_set, "val", None)
            if config.eval_every_epochs and (epoch + 1) % config.eval_every_epochs == 0 and val is not None:
                test_describer.set_variables(state.variables())
                val_map = validation_map(test_describer, val,
                                         progress=status.counter("validation", val.num_images))
                writer.write(step, {"val/mAP": val_map})
                say(f"epoch {epoch + 1}/{config.num_epochs}: validation mAP {val_map:.2f}")
                if meta["best_val_map"] is None or val_map > meta["best_val_map"]:
                    meta = {**meta, "best_val_map": val_map, "best_step": step}
                    export(state)
            save_checkpoint(step, meta)
        bar.close()
    finally:
        ckpt.wait()
        source.close()

    if meta["best_step"] is None or not os.path.exists(export_dir):  # no validation split: export the last
        export(state)
        meta = {**meta, "best_step": step}
    summary.update(step=step, loss=loss_value, best_val_map=meta["best_val_map"], best_step=meta["best_step"])

    # ---- the exported model on the test set
    if test_set is not None:
        final = state.variables() if meta["best_step"] == step else load_exported(export_dir)[1]
        summary["test_after"] = evaluate_test(final, "eval_after",
                                              f"after training (model of step {meta['best_step']})")
        before_path = os.path.join(workdir, "eval_before.json")
        if "test_before" not in summary and os.path.exists(before_path):
            import json

            with open(before_path) as f:
                summary["test_before"] = json.load(f)
        setup = main_setup(summary["test_after"])  # "medium", or "all" for a labelled test set
        medium = {k: summary[k][setup]["mAP"] for k in ("test_off_the_shelf", "test_before", "test_after")
                  if k in summary}
        if "test_off_the_shelf" in medium:
            shelf, before, after = medium["test_off_the_shelf"], medium["test_before"], medium["test_after"]
            say(f"{setup.capitalize()} mAP: {shelf:.2f} off the shelf -> {before:.2f} with the KL + "
                f"whitening head -> {after:.2f} trained ({after - before:+.2f})")
        elif "test_before" in medium:
            say(f"{setup.capitalize()} mAP: {medium['test_before']:.2f} -> {medium['test_after']:.2f}")
    writer.close()
    ckpt.close()
    return summary
