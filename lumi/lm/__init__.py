"""Language-model math shared by training and evaluation: the loss (labels shifted once) and scoring."""
