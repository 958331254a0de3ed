"""The distilled sampler's spec (docs/design.md, the sampler), checked with fake denoisers
whose answers are known in closed form. Expected values come from the upstream recipe written
out here, never from pid_trt.sampling itself:

    ts  = [0.999, 0.866, 0.634, 0.342, 0.0]; k steps index it at round(linspace(0, 4, k + 1)),
          half to even; k = 1 is one call at t = 1.0
    x   = noise[0]
    for i in 0 .. k-1:
        v  = net(x, ts[i]);  x0 = x - ts[i] * v
        x  = (1 - ts[i+1]) * x0 + ts[i+1] * noise[i+1]  if ts[i+1] > 0  else x0
    image = clamp(x, -1, 1)
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from pid_trt.sampling import RELEASED_T_LIST, draw_noise, sample, timesteps

#: The released t-list, as upstream's configs spell it (student_t_list).
UPSTREAM_T_LIST = (0.999, 0.866, 0.634, 0.342, 0.0)
SHAPE = (2, 3, 6, 10)  # [B, 3, H, W]
#: The fakes compute in float32 and the sampler's x0 in float64: a few float32 ulps of |x| <= ~10.
TOL = 1e-5


def upstream_timesteps(k: int) -> tuple[float, ...]:
    """round(linspace(0, 4, k + 1)) with half-to-even rounding (Python's round on exact
    fractions), indexing the released list; k = 1 is the single-step student at t = 1.0."""
    if k == 1:
        return (1.0, 0.0)
    return tuple(UPSTREAM_T_LIST[round(Fraction(4 * j, k))] for j in range(k + 1))


class ExactDenoiser:
    """The ideal network for a known clean image ``x0``: v = (x - x0) / t, so that every
    step's estimate x - t * v is ``x0``. Records each call's (x, t)."""

    def __init__(self, x0: torch.Tensor) -> None:
        self.x0 = x0
        self.calls: list[tuple[torch.Tensor, float]] = []

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.calls.append((x.clone(), t))
        return (x - self.x0) / t


class ConstantDenoiser:
    """A network that always answers the velocity ``v``. Records each call's (x, t)."""

    def __init__(self, v: torch.Tensor) -> None:
        self.v = v
        self.calls: list[tuple[torch.Tensor, float]] = []

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.calls.append((x.clone(), t))
        return self.v.clone()


def gaussian(seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*SHAPE, generator=gen)


def noise_draws(k: int, seed: int = 100) -> list[torch.Tensor]:
    return [gaussian(seed + i) for i in range(k)]


# --------------------------------------------------------------------------- the t-list
def test_released_list_is_upstreams():
    assert tuple(RELEASED_T_LIST) == UPSTREAM_T_LIST
    assert timesteps() == UPSTREAM_T_LIST  # 4 steps is the default


@pytest.mark.parametrize(
    "k, expected",
    [
        (1, (1.0, 0.0)),  # the single-step student: the network sees 1000
        (2, (0.999, 0.634, 0.0)),  # upstream's documented example
        (3, (0.999, 0.866, 0.342, 0.0)),  # upstream's documented example
        (4, (0.999, 0.866, 0.634, 0.342, 0.0)),
        # 4j/7 = 0, .57, 1.14, 1.71, 2.29, 2.86, 3.43, 4 -> indices 0 1 1 2 2 3 3 4 (duplicates, as upstream)
        (7, (0.999, 0.866, 0.866, 0.634, 0.634, 0.342, 0.342, 0.0)),
        # 4j/8 = 0, .5, 1, 1.5, 2, 2.5, 3, 3.5, 4 -> half to even: 0 0 1 2 2 2 3 4 4
        (8, (0.999, 0.999, 0.866, 0.634, 0.634, 0.634, 0.342, 0.0, 0.0)),
    ],
)
def test_timesteps_index_the_released_list_at_rounded_linspace(k, expected):
    assert upstream_timesteps(k) == expected  # the recipe above, written out by hand
    assert timesteps(k) == expected


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "4", None])
def test_step_count_that_is_not_a_positive_integer_is_refused(bad):
    with pytest.raises(ValueError, match=r"steps=.*expected an integer >= 1"):
        timesteps(bad)


# --------------------------------------------------------------------------- the loop
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_each_step_sees_the_t_list_and_the_renoised_exact_x0(k):
    """With the ideal denoiser, call i gets t = ts[i] and x = (1 - ts[i]) x0 + ts[i] noise[i]
    (call 0: the initial noise itself); the image is x0. x0 reaches past [-1, 1], so the
    re-noise uses the unclamped estimate."""
    x0 = gaussian(1, scale=2.0)
    noise = noise_draws(k)
    den = ExactDenoiser(x0)
    image = sample(den, noise, steps=k)
    ts = upstream_timesteps(k)
    assert [t for _, t in den.calls] == list(ts[:-1])
    torch.testing.assert_close(den.calls[0][0], noise[0], atol=0, rtol=0)
    for i in range(1, k):
        expected = (1 - ts[i]) * x0.double() + ts[i] * noise[i].double()
        torch.testing.assert_close(den.calls[i][0].double(), expected, atol=TOL, rtol=0)
    torch.testing.assert_close(image, x0.clamp(-1, 1), atol=TOL, rtol=0)


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_estimate_is_x_minus_t_times_v_for_any_velocity(k):
    """A constant velocity c: x0_i = x_i - ts[i] c, x_{i+1} = (1 - ts[i+1]) x0_i + ts[i+1]
    noise[i+1], image = clamp(x0_{k-1}); the recursion is unrolled here in float64."""
    c = gaussian(2, scale=0.5)
    noise = noise_draws(k)
    den = ConstantDenoiser(c)
    image = sample(den, noise, steps=k)
    ts = upstream_timesteps(k)
    x = noise[0].double()
    for i in range(k):
        torch.testing.assert_close(den.calls[i][0].double(), x, atol=TOL, rtol=0)
        x0 = x - ts[i] * c.double()
        x = (1 - ts[i + 1]) * x0 + ts[i + 1] * noise[i + 1].double() if i + 1 < k else x0
    assert len(den.calls) == k
    torch.testing.assert_close(image.double(), x.clamp(-1, 1), atol=TOL, rtol=0)


def test_one_step_image_is_noise_minus_velocity():
    """k = 1: one call at t = 1.0, image = clamp(noise - v)."""
    noise, c = gaussian(3), gaussian(4)
    den = ConstantDenoiser(c)
    image = sample(den, [noise], steps=1)
    assert [t for _, t in den.calls] == [1.0]
    torch.testing.assert_close(image, (noise - c).clamp(-1, 1), atol=TOL, rtol=0)


def test_image_is_clamped_to_minus_one_one_and_float32():
    x0 = torch.linspace(-3, 3, 2 * 3 * 6 * 10).reshape(SHAPE)
    image = sample(ExactDenoiser(x0), noise_draws(4))
    assert image.dtype == torch.float32 and image.shape == SHAPE
    assert float(image.min()) == -1.0 and float(image.max()) == 1.0
    inside = x0.abs() < 0.99
    torch.testing.assert_close(image[inside], x0[inside], atol=TOL, rtol=0)
    assert bool((image[x0 <= -1] == -1).all()) and bool((image[x0 >= 1] == 1).all())


@pytest.mark.parametrize("k, given", [(4, 3), (4, 5), (1, 2), (2, 0), (7, 4)])
def test_wrong_number_of_noise_draws_is_refused_before_any_step(k, given):
    den = ExactDenoiser(torch.zeros(SHAPE))
    with pytest.raises(ValueError, match=rf"noise has {given} draws: expected {k} for {k} step"):
        sample(den, noise_draws(given), steps=k)
    assert den.calls == []


# --------------------------------------------------------------------------- noise draws
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_one_draw_per_step_float32_of_the_image_shape(k):
    draws = draw_noise(SHAPE, steps=k, seed=5)
    assert len(draws) == k
    assert all(d.shape == SHAPE and d.dtype == torch.float32 and d.device.type == "cpu" for d in draws)


def test_same_seed_gives_the_same_draws_and_another_seed_others():
    a, b, c = draw_noise(SHAPE, 4, seed=7), draw_noise(SHAPE, 4, seed=7), draw_noise(SHAPE, 4, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert not torch.equal(a[0], a[1])  # each re-noise is a fresh draw


def test_draws_are_one_cpu_generator_in_order():
    """The seed's contract: initial noise, then each re-noise draw, from one CPU generator
    seeded with the seed, so a seed gives the same noise whatever the backend or device."""
    gen = torch.Generator(device="cpu").manual_seed(7)
    expected = [torch.randn(*SHAPE, generator=gen, dtype=torch.float32) for _ in range(4)]
    draws = draw_noise(SHAPE, 4, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(draws, expected, strict=True))


def test_same_seed_gives_the_same_image():
    x0 = gaussian(6)
    one = sample(ConstantDenoiser(x0), draw_noise(SHAPE, 4, seed=11))
    two = sample(ConstantDenoiser(x0), draw_noise(SHAPE, 4, seed=11))
    other = sample(ConstantDenoiser(x0), draw_noise(SHAPE, 4, seed=12))
    assert torch.equal(one, two) and not torch.equal(one, other)
