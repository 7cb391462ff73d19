"""Sampling noise schedules: decreasing sigma sequences in VE units, ending with 0."""
import torch


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM's schedule (Karras et al. 2022, eq. 5) with t_N = 0 appended: [n + 1] float64.

    sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i = 0 .. n - 1, so sigma_0 = sigma_max and sigma_{n-1} = sigma_min; n = 1 gives [sigma_max, 0].
    """
    if n < 1:
        raise ValueError(f"n: the number of sampling steps must be >= 1, got {n}")
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    ramp = torch.arange(n, dtype=torch.float64) / (n - 1)
    max_inv_rho = sigma_max ** (1.0 / rho)
    min_inv_rho = sigma_min ** (1.0 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])
