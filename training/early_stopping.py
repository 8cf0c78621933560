"""Prechelt's UP_p early-stopping criterion, as Wei et al. (Sec. 2.3) use it with q = 5, p = 3.

L. Prechelt, "Early stopping - but when?", Neural Networks: Tricks of the Trade (1998):
training is judged at the end of each strip of q epochs, and

- UP_1 stops after the first end-of-strip epoch t with E(t) > E(t - q);
- UP_p stops after epoch t iff UP_(p-1) stops after epoch t - q and E(t) > E(t - q),

E being the generalisation (validation) error. Unrolled: the error rose from each strip's
end to the next in p successive strips. Prechelt counts E(0), the error before training;
it is not measured here, so the first comparison is E(2q) > E(q) and UP_p can first stop
after epoch (p + 1) q (20 for Wei's values).
"""

from __future__ import annotations

from collections.abc import Sequence


def up_stops(errors: Sequence[float], strip_length: int, strips: int) -> bool:
    """True when UP_``strips`` stops after the last epoch; ``errors[i]`` is E after epoch i + 1."""
    if strip_length < 1 or strips < 1:
        raise ValueError("strip_length and strips must be >= 1")
    t = len(errors)
    if t % strip_length or t < (strips + 1) * strip_length:
        return False
    return all(errors[t - 1 - j * strip_length] > errors[t - 1 - (j + 1) * strip_length] for j in range(strips))
