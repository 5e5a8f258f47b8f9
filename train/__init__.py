"""Commands: training (train.main), evaluation (train.eval), head initialisation (train.init_head)."""
