"""Fine-tuning jobs for approved users: the Django side of the `training` engine.

- `models`: `TrainingDataset` (an uploaded JSONL/text file, validated and tokenized by an `io` job)
  and `TrainingJob` (one `python -m training train` run on the `gpu` queue); both are kinds of the one
  job mechanism (`jobs`): claim with a fencing token, heartbeat, reaper, cancel;
- `services`: upload, submit, cancel, operator pause/resume; `runs`: running a dataset's tokenization
  and a job's training subprocess, following its logbook into the row, registering the result;
- `selectors`: the doors (`access_dataset`, `access_training_job`, `access_operator_training_job`).

`training/` never imports Django; this app is the only seam.
"""
