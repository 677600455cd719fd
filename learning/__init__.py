"""The learning loop ([6/7]): training data from the log, rewards, SFT and self-training."""
