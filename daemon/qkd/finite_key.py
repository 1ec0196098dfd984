"""How much secret key a block yields: the finite-key bound of BBM92/BB84 key post-processing.

The bound is the one of Tomamichel, Lim, Gisin and Renner, "Tight finite-key analysis for
quantum cryptography", Nat. Commun. 3, 634 (2012), Eq. (2) in its common form: a block of ``n``
key bits whose phase errors are estimated from ``k`` bits measured in the other basis (error
fraction ``q``) yields an ε_sec-secret, ε_cor-correct key of

    ℓ = ⌊ n·[1 − h(q + μ)] − leak_EC − log₂(2 / (ε_sec²·ε_cor)) ⌋,
    μ = √( (n + k)/(n·k) · (k + 1)/k · ln(2/ε_sec) ),

h the binary entropy, leak_EC every bit the error correction and verification disclosed. μ is
how far the phase-error fraction of the n key bits can lie above the k estimation bits' (a
sampling-without-replacement bound) except with probability ε_sec. Against the asymptotic BBM92
fraction 1 − f·h(Q_bit) − h(Q_phase) (Shor and Preskill 2000) ℓ/n converges as n grows
(:func:`asymptotic_fraction`). ``docs/physicists/keys.md`` states how the blocks use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

#: Default secrecy and correctness parameters of one block (the values of the paper's examples
#: are 1e-10 and 1e-15 as well): ε_sec bounds the distance of the key from an ideal one, ε_cor
#: the probability that the two ends' keys differ although the verification passed.
EPS_SEC = 1e-10
EPS_COR = 1e-15


def binary_entropy(q: float) -> float:
    """h(q) = −q·log₂ q − (1 − q)·log₂(1 − q), bits; 0 at q ∈ {0, 1}; q outside [0, 1] is an
    error."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"binary_entropy needs 0 <= q <= 1, got {q}")
    if q in (0.0, 1.0):
        return 0.0
    return -q * math.log2(q) - (1.0 - q) * math.log2(1.0 - q)


def statistical_deviation(n: int, k: int, eps_sec: float = EPS_SEC) -> float:
    """μ of the bound (see the module docstring): how far the phase-error fraction of ``n`` key
    bits may exceed the error fraction of ``k`` estimation bits, except with probability
    ``eps_sec``."""
    if n <= 0 or k <= 0:
        raise ValueError(f"statistical_deviation needs n > 0 and k > 0, got n={n} k={k}")
    if not 0.0 < eps_sec < 1.0:
        raise ValueError(f"eps_sec must lie in (0, 1), got {eps_sec}")
    return math.sqrt((n + k) / (n * k) * (k + 1) / k * math.log(2.0 / eps_sec))


@dataclass(frozen=True)
class KeyLength:
    """The bound for one block: ``length`` secret bits (0: none), and its terms — the phase-error
    bound ``phase_bound`` = q + μ, ``mu``, the entropy term n·[1 − h(q + μ)] (bits), the leak
    and the security cost log₂(2/(ε_sec²·ε_cor)) (bits)."""

    length: int
    phase_bound: float
    mu: float
    entropy_bits: float
    leak_bits: int
    security_bits: float


def secret_length(n: int, k: int, phase_errors: float, leak_bits: int, *,
                  eps_sec: float = EPS_SEC, eps_cor: float = EPS_COR) -> KeyLength:
    """The finite-key length of a block (Tomamichel et al. 2012; module docstring): ``n`` key bits,
    ``k`` bits in the other basis with error fraction ``phase_errors``, ``leak_bits`` disclosed by
    error correction and verification. Never negative; 0 when q + μ reaches 1/2."""
    if not 0.0 <= phase_errors <= 1.0:
        raise ValueError(f"phase_errors must lie in [0, 1], got {phase_errors}")
    if leak_bits < 0:
        raise ValueError(f"leak_bits must be >= 0, got {leak_bits}")
    if not 0.0 < eps_cor < 1.0:
        raise ValueError(f"eps_cor must lie in (0, 1), got {eps_cor}")
    mu = statistical_deviation(n, k, eps_sec)
    bound = phase_errors + mu
    entropy = n * (1.0 - binary_entropy(bound)) if bound < 0.5 else 0.0
    security = math.log2(2.0 / (eps_sec ** 2 * eps_cor))
    length = math.floor(entropy - leak_bits - security) if entropy > 0 else 0
    return KeyLength(max(0, length), bound, mu, entropy, leak_bits, security)


def asymptotic_fraction(q_bit: float, q_phase: float, f_ec: float = 1.0) -> float:
    """The asymptotic secret fraction per sifted key bit, 1 − f·h(q_bit) − h(q_phase), at least 0
    (Shor and Preskill 2000; with ``f_ec`` the error correction's efficiency)."""
    return max(0.0, 1.0 - f_ec * binary_entropy(q_bit) - binary_entropy(q_phase))


def qber_threshold(f_ec: float = 1.0) -> float:
    """The QBER at which :func:`asymptotic_fraction` (equal bit and phase errors) reaches 0: about
    11.0 % at f = 1 (bisection to 1e-9)."""
    lo, hi = 0.0, 0.5
    while hi - lo > 1e-9:
        mid = (lo + hi) / 2
        if asymptotic_fraction(mid, mid, f_ec) > 0:
            lo = mid
        else:
            hi = mid
    return lo
