"""What differs per trainer: one objective per stage, run by the one loop in lumi.train.trainer."""
