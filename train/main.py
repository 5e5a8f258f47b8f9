r"""Train a retrieval model: `python -m train.main --config=train/configs/NAME.py --workdir=DIR`.

Override any config field on the command line, e.g. `--config.num_epochs=3 --config.model.dtype=bfloat16`.
A wrong key or type fails while the flags are parsed and a wrong value fails in `validate_config`, both
before any compute. Rerunning the same command with the same workdir resumes from the latest checkpoint.

Several processes (TPU pods, multi-node GPU, or several CPU processes): run the same command in every process
with `--coordinator_address=HOST:PORT --num_processes=N --process_id=I`, or with `--config.distributed=True`
(or JAX_COORDINATOR_ADDRESS set) to let JAX find them from the cluster (SLURM, Open MPI, Kubernetes, TPU).
The mesh then spans every device of every process; process 0 writes the shared outputs.
"""

import sys

from remap_jax.runtime.command_errors import keeping, reports_os_errors
from remap_jax.runtime.extras import require_for_command

require_for_command("python -m train.main", {"train": ("absl", "ml_collections", "optax", "matplotlib"),
                                             "data": ("tensorflow_datasets",)})

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events, exports and results.")
config_flags.DEFINE_config_file("config", None, "Training configuration file (train/configs/NAME.py).",
                                lock_config=True)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (several processes)")
flags.DEFINE_integer("num_processes", None, "how many processes take part")
flags.DEFINE_integer("process_id", None, "this process's id, 0 .. num_processes - 1")
flags.DEFINE_integer("cpu_devices", 0, "JAX devices on a CPU host: 0 = one per core (XLA:CPU runs a device "
                     "on one thread); ignored where XLA_FLAGS sets --xla_force_host_platform_device_count")
flags.mark_flags_as_required(["config", "workdir"])


def _kept(workdir: str) -> str:
    """`kept_checkpoints`, imported late: train.checkpoints imports jax, which `main` starts only after it
    has set the CPU device count."""
    from train.checkpoints import kept_checkpoints

    return kept_checkpoints(workdir)


@reports_os_errors("python -m train.main", exit=True)
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = FLAGS.config
    if not FLAGS["verbosity"].present:  # Orbax logs every checkpoint step at INFO; -v 0 brings it back
        logging.set_verbosity(logging.WARNING)
    from train import loop, validate  # heavy imports (jax, optax, orbax) only after the flags parsed

    try:
        validate.validate_config(config)
    except ValueError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
    import jax

    from remap_jax.runtime import distributed

    distributed.use_cpu_cores(FLAGS.cpu_devices)
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           auto=config.distributed)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{jax.process_count()} process(es); workdir {FLAGS.workdir}", flush=True)
    try:
        with keeping(lambda: _kept(FLAGS.workdir)):
            loop.train_and_evaluate(config, FLAGS.workdir)
    except loop.NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def parse_flags(argv):
    """absl flag parsing; a config override naming a field that does not exist exits with a one-line error."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.",
              file=sys.stderr)
        sys.exit(1)
    except (AttributeError, KeyError) as e:  # ml_collections: unknown key in a locked config
        detail = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        print(f"FATAL config error: no such config field: {detail}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
