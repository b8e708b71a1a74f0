"""How hard the store may press the API server (controller-runtime's `QPS`/`Burst`, and
the Job controller's parallel creates): a pass's new Jobs are created `concurrency` at a
time, and every write of the store waits for a token of one shared bucket."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_CONCURRENCY = 8
DEFAULT_QPS = 20.0  # controller-runtime's defaults; client-go's own are 5/10
DEFAULT_BURST = 30


@dataclass(frozen=True)
class ClientLimits:
    """Creates in flight at once, and writes a second on average / at once (qps <= 0: no
    limit)."""

    concurrency: int = DEFAULT_CONCURRENCY
    qps: float = DEFAULT_QPS
    burst: int = DEFAULT_BURST

    def check(self) -> str:
        """What is wrong with these limits, as a flag's user must read it ("" if nothing)."""
        if self.concurrency < 1:
            return f"--kube-concurrency must be 1 or more (got {self.concurrency})"
        if self.qps > 0 and self.burst < 1:
            return f"--kube-burst must be 1 or more when --kube-qps is set (got {self.burst})"
        return ""


DEFAULT_LIMITS = ClientLimits()
