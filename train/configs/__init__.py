"""Experiment configs for `python -m train.main --config=train/configs/NAME.py`; base.py is the schema."""
