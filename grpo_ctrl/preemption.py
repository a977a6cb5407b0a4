"""Stop signals held back to the next training-step boundary, so a preempted run checkpoints before it goes.

SIGTERM: `scontrol requeue`, `scancel`, Slurm preemption, torchrun stopping its workers. SIGUSR1: the usual
`sbatch --signal` choice. SIGUSR2: submitit's warning `signal_delay_s` before the time limit, on which its
handler (the launcher's `checkpoint`) resubmits the job and Slurm requeues it.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopSignals:
    """While active, a stop signal is only noted (`received`); `hand_over()` then lets the handler that was
    there before act on it (submitit requeues the job) and ends the run.

        with StopSignals() as stop:
            while training:
                step()
                if stop.received:
                    save_checkpoint()
                    stop.hand_over(stop.received)
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal stays ignored
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def hand_over(self, signum: int) -> None:
        """Restore the previous handlers, call the one of `signum` (it may exit: submitit's does after
        requeueing), then end the run with exit status 128 + `signum`, as if the signal had ended it.

        `signum` may be a signal another rank received: every rank stops at the same step."""
        previous = self._previous.get(signum)
        self.__exit__()
        if callable(previous):
            previous(signum, None)
        raise SystemExit(128 + signum)
