"""One mechanism for every long job (verification, reshard, training, deployment health checks).

- `models.Job`: the abstract row each kind extends (status, attempts as the fencing token, heartbeat,
  dispatch time, cancel request, phase, progress, error);
- `kinds`: each kind registers its Celery task, its policy (stale after, attempts, heartbeat interval)
  and what to clean up when the reaper gives up on a job;
- `services`: claim with a fencing token, heartbeat, progress, finish, requeue, cancel and the one
  reaper for all kinds;
- `runner`: a plain-Python subprocess runner (e.g. `torchrun ...`) that follows the output, heartbeats
  and kills the whole process group on cancel or timeout. It never imports Django.
"""
