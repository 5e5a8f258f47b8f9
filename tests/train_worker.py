"""One process of a training run of the tiny test model (tests/test_multiprocess.py starts one or several).

    python tests/train_worker.py --workdir W [--with-test-set] [--crash-at STEP] [--coordinator_address ...]

`--crash-at` ends the process abruptly (os._exit, like a kill: no clean-up, no final checkpoint) right after
that training step.
"""

import argparse
import json
import os


def main() -> None:
    from remap_jax.runtime import distributed

    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--with-test-set", action="store_true")
    parser.add_argument("--crash-at", type=int, default=0)
    distributed.add_flags(parser)
    args = parser.parse_args()
    distributed.initialize_from_args(args)  # before anything touches a device

    import jax
    from test_train import FakeTestSet, FakeTrainingSet, TinyModel, _export, tiny_config

    from train.loop import train_and_evaluate

    def crash(step: int) -> None:
        if step == args.crash_at:
            os._exit(17)

    summary = train_and_evaluate(tiny_config(), args.workdir, model=TinyModel(),
                                 training_set=FakeTrainingSet(), export_fn=_export,
                                 test_set=FakeTestSet() if args.with_test_set else None,
                                 step_hook=crash if args.crash_at else None)
    print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                      "devices": jax.device_count(), "step": summary["step"],
                      "medium": summary.get("test_after", {}).get("medium", {}).get("mAP")}))


if __name__ == "__main__":
    main()
