"""Training, evaluation and head-initialisation commands (python -m train.main / train.eval / train.init_head)."""
