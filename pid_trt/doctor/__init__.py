"""``pidtrt doctor``: what this machine can do, and whether a job runs here.

- :mod:`~pid_trt.doctor.facts`: the machine's facts, gathered once (frozen dataclasses).
- :mod:`~pid_trt.doctor.job`: the job asked about, resolved from the command's options.
- :mod:`~pid_trt.doctor.rules`: the verdict and report types, the hardware rules.
- :mod:`~pid_trt.doctor.verdicts` and :mod:`~pid_trt.doctor.job_verdicts`: a pure function
  from facts and job to verdicts (:func:`judge`).
"""

from pid_trt.doctor.facts import MachineFacts, gather
from pid_trt.doctor.job import Job, resolve_job
from pid_trt.doctor.rules import Report, Verdict
from pid_trt.doctor.verdicts import judge

__all__ = ["Job", "MachineFacts", "Report", "Verdict", "gather", "judge", "resolve_job"]
