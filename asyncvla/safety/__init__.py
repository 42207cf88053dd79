"""Safe training: the action shield (``shield``) and the training monitor with its alerts (``monitor``)."""
