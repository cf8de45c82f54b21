"""Time grids: which ORIGINAL timesteps of a T-step diffusion a sampler visits (pure NumPy/stdlib).

One parser, :func:`parse_grid`, reads every ``--timestep_respacing`` string; ``respace.space_timesteps``
(upstream's name) and ``script_util.create_gaussian_diffusion`` call it. A grid is a strictly
decreasing list g_0 > g_1 > ... > g_{N-1} of original timesteps in [0, T); sampling starts from pure
noise at g_0, visits each g_k once (one network evaluation per step for one-step solvers) and the
last step goes to clean data (alpha_bar = 1). The respaced index of g_k is N - 1 - k
(``SpacedDiffusion.timestep_map`` holds the grid in increasing order).

Families (T = diffusion_steps, N = steps; abar_t the base schedule's alpha_bar,
sigma(t) = sqrt((1 - abar_t) / abar_t), lambda(t) = -log sigma(t), the half log-SNR):

``ddimN``      upstream: the smallest stride s with len(range(0, T, s)) == N; range(0, T, s).
``quadN``      DDIM repository's quadratic skip: {int(x^2) : x in linspace(0, sqrt(0.8 T), N)}.
``pndmN``      TS-DPM DDPM-backbone grid: 1, 1 + T//N, ..., without the last multiple.
``N``, ``a,b,c``  upstream sections: [0, T) in equal sections, evenly spaced rounded steps in each.
``trailingN``  diffusers' "trailing": round(T - k T / N) - 1 for k = 0..N-1 (starts at T - 1).
``linspaceN``  diffusers' "linspace": round(linspace(0, T - 1, N)) (starts at T - 1, ends at 0).
``logsnrN[:smax]``  uniform in lambda: lambda_k = lambda_top + k/(N-1) (lambda(0) - lambda_top),
               lambda_top = -log(min(sigma(T-1), smax)), smax = 80 by default (EDM's sigma_max).
``karrasN[:rho[:smax]]``  EDM (Karras et al. 2022): sigma_k = (s_top^(1/rho) + k/(N-1)
               (sigma(0)^(1/rho) - s_top^(1/rho)))^rho, s_top = min(sigma(T-1), smax), rho = 7.
``t:g0,g1,...``  an explicit list of original timesteps (strictly decreasing).
``file:PATH``  a JSON grid file (:func:`grid_document`; written by ``scripts/optimize_grid.py``).

``logsnr`` and ``karras`` map each point to the original timestep nearest in lambda (log sigma);
the top is capped at sigma = smax because ADM's cosine betas are clipped at 0.999 (sigma(T-1) is
about 2e4 there), where spreading over the full range repeats timesteps near T - 1 already at N = 10.
With the cap they start at t = 991 on the cosine schedule (abar 1.6e-4) and at T - 1 on the linear one.
A family whose rounding repeats a timestep is an error naming the largest N that works.
"""

import hashlib
import json
import math
import os
from typing import NamedTuple, Optional

import numpy as np

SIGMA_MAX = 80.0
KARRAS_RHO = 7.0
GRID_FILE_FORMAT = "guided-diffusion-grid/1"
# The families of upstream and of the TS-DPM repositories: the time shift keeps its upstream
# stride-based target on them (bit-for-bit); on every other grid it uses the grid's own next step.
UPSTREAM_FAMILIES = ("ddim", "quad", "pndm", "sections")
FAMILIES_HELP = ("'' (all T), 'N' or 'a,b,c' (upstream sections), ddimN, quadN, pndmN, trailingN, linspaceN, "
                 "logsnrN[:smax], karrasN[:rho[:smax]], t:999,600,300,0 (original timesteps) or file:PATH "
                 "(a grid file from scripts/optimize_grid.py)")


class Grid(NamedTuple):
    """A parsed grid. ``timesteps``: original timesteps, strictly decreasing (sampling order);
    ``family``: the family name ("ddim", "sections", "trailing", "file", ...); ``meta``: the grid
    file's contents for ``file:`` grids (else None)."""

    timesteps: tuple
    family: str
    meta: Optional[dict] = None

    @property
    def upstream(self):
        """Whether this is one of upstream's families (the time shift's target keeps upstream's stride)."""
        return self.family in UPSTREAM_FAMILIES


def _bad(spec, why):
    return ValueError(f"timestep_respacing {spec!r}: {why}")


def _count(spec, text, prefix, low=1):
    """N of "<prefix>N", or a one-line ValueError naming the string."""
    try:
        n = int(text[len(prefix):])
    except ValueError:
        raise _bad(spec, f"expected '{prefix}N' with an integer N") from None
    if low is not None and n < low:
        raise _bad(spec, f"N must be >= {low}")
    return n


def check_timesteps(timesteps, num_timesteps, what):
    """Validate an explicit grid: ints in [0, T), strictly decreasing, at least one step.

    :return: the grid as a tuple of Python ints. :raises ValueError: one line naming ``what``.
    """
    try:
        ts = [int(t) for t in timesteps]
        if any(int(t) != t for t in timesteps):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"{what}: timesteps must be integers, got {list(timesteps)!r}") from None
    if not ts:
        raise ValueError(f"{what}: a grid needs at least 1 step")
    bad = [t for t in ts if not 0 <= t < num_timesteps]
    if bad:
        raise ValueError(f"{what}: timestep {bad[0]} is out of range [0, {num_timesteps - 1}] (T = {num_timesteps})")
    if len(set(ts)) != len(ts):
        rep = next(t for t in ts if ts.count(t) > 1)
        raise ValueError(f"{what}: timestep {rep} repeats; a grid visits each timestep once")
    for a, b in zip(ts, ts[1:]):
        if b >= a:
            raise ValueError(f"{what}: timesteps must be strictly decreasing (noisiest first), but {b} follows {a}")
    return tuple(ts)


def sigmas(alphas_cumprod):
    """sigma(t) = sqrt((1 - abar_t) / abar_t) of a (T,) alpha_bar table: (T,) float64, increasing."""
    a = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.sqrt((1.0 - a) / a)


def nearest_timesteps(log_sigma_points, alphas_cumprod):
    """Each point (log sigma) mapped to the original timestep whose log sigma(t) is nearest (the
    lower timestep on a tie); log sigma(t) increases with t."""
    table = np.log(sigmas(alphas_cumprod))
    pts = np.asarray(log_sigma_points, dtype=np.float64)
    hi = np.clip(np.searchsorted(table, pts), 1, len(table) - 1) if len(table) > 1 else np.zeros(len(pts), int)
    lo = np.maximum(hi - 1, 0)
    pick = np.where(np.abs(pts - table[lo]) <= np.abs(table[hi] - pts), lo, hi)
    return [int(t) for t in pick]


def logsnr_timesteps(n, alphas_cumprod, sigma_max=SIGMA_MAX):
    """N timesteps uniform in lambda = -log sigma from min(sigma(T-1), sigma_max) down to sigma(0)."""
    s = sigmas(alphas_cumprod)
    top, bottom = math.log(min(s[-1], sigma_max)), math.log(s[0])
    pts = [top] if n == 1 else [top + k / (n - 1) * (bottom - top) for k in range(n)]
    return nearest_timesteps(pts, alphas_cumprod)


def karras_timesteps(n, alphas_cumprod, rho=KARRAS_RHO, sigma_max=SIGMA_MAX):
    """EDM's N sigmas (s_top^(1/rho) + k/(N-1) (s_min^(1/rho) - s_top^(1/rho)))^rho, mapped to timesteps."""
    s = sigmas(alphas_cumprod)
    top, bottom = min(s[-1], sigma_max) ** (1 / rho), s[0] ** (1 / rho)
    pts = [top] if n == 1 else [top + k / (n - 1) * (bottom - top) for k in range(n)]
    return nearest_timesteps([rho * math.log(p) for p in pts], alphas_cumprod)


def trailing_timesteps(num_timesteps, n):
    """diffusers' "trailing" spacing: round(arange(T, 0, -T/N)) - 1 (k = 0..N-1), starts at T - 1."""
    return [int(v) - 1 for v in np.round(num_timesteps - np.arange(n) * (num_timesteps / n))]


def linspace_timesteps(num_timesteps, n):
    """diffusers' "linspace" spacing: round(linspace(0, T - 1, N)), noisiest first."""
    return [int(v) for v in np.linspace(0, num_timesteps - 1, n).round()[::-1]]


def _distinct_or_error(spec, family, n, make, limit):
    """``make(n)`` if its N timesteps are distinct, else a ValueError naming the largest N that is."""
    ts = make(n)
    if len(set(ts)) == n:
        return ts
    largest = next((m for m in range(min(n - 1, limit), 0, -1) if len(set(make(m))) == m), 1)
    raise _bad(spec, f"the {family} grid repeats timesteps after rounding to the {limit}-step table "
               f"(only {len(set(ts))} distinct of {n}); use {family}{largest} or fewer steps")


def _float_options(spec, parts, names):
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise _bad(spec, f"expected numbers after ':' ({', '.join(names)})") from None


def parse_grid(spec, num_timesteps, alphas_cumprod=None):
    """Parse a ``--timestep_respacing`` string (or upstream's list of section counts) into a :class:`Grid`.

    :param spec: the string (see the module docstring), or a list of per-section counts; '' is
        not accepted here (the caller means "all T steps", i.e. sections [T]).
    :param num_timesteps: T of the base process.
    :param alphas_cumprod: (T,) base alpha_bar table; needed by ``logsnr`` and ``karras``.
    :raises ValueError: one line naming the string and the problem.
    """
    T = int(num_timesteps)
    if not isinstance(spec, str):
        return Grid(tuple(sorted(_sections(T, list(spec)), reverse=True)), "sections")
    text = spec.strip()
    if text.startswith("file:"):
        meta = read_grid_file(text[5:], num_timesteps=T)
        return Grid(tuple(meta["timesteps"]), "file", meta)
    if text.startswith("t:"):
        items = [p.strip() for p in text[2:].split(",")]
        try:
            ts = [int(p) for p in items]
        except ValueError:
            raise _bad(spec, "expected 't:' and a comma list of integer original timesteps, e.g. t:999,600,300,0") from None
        return Grid(check_timesteps(ts, T, f"timestep_respacing {spec!r}"), "explicit")
    for family in ("trailing", "linspace", "logsnr", "karras"):
        if text.startswith(family):
            head, *opts = text.split(":")
            n = _count(spec, head, family)
            if family == "trailing":
                if opts:
                    raise _bad(spec, "trailingN takes no options")
                ts = _distinct_or_error(spec, family, n, lambda m: trailing_timesteps(T, m), T)
            elif family == "linspace":
                if opts:
                    raise _bad(spec, "linspaceN takes no options")
                ts = _distinct_or_error(spec, family, n, lambda m: linspace_timesteps(T, m), T)
            else:
                if alphas_cumprod is None or len(alphas_cumprod) != T:
                    raise _bad(spec, f"the {family} family needs the noise schedule's alpha_bar table (T = {T})")
                if family == "logsnr":
                    if len(opts) > 1:
                        raise _bad(spec, "expected logsnrN or logsnrN:smax")
                    (smax,) = _float_options(spec, opts, ["smax"]) or [SIGMA_MAX]
                    rho = None
                else:
                    if len(opts) > 2:
                        raise _bad(spec, "expected karrasN, karrasN:rho or karrasN:rho:smax")
                    vals = _float_options(spec, opts, ["rho", "smax"])
                    rho = vals[0] if vals else KARRAS_RHO
                    smax = vals[1] if len(vals) > 1 else SIGMA_MAX
                    if not rho > 0:
                        raise _bad(spec, f"rho must be > 0, got {rho:g}")
                if not smax > sigmas(alphas_cumprod)[0]:
                    raise _bad(spec, f"smax must exceed sigma(0) = {sigmas(alphas_cumprod)[0]:.3g}, got {smax:g}")
                make = ((lambda m: logsnr_timesteps(m, alphas_cumprod, smax)) if family == "logsnr"
                        else (lambda m: karras_timesteps(m, alphas_cumprod, rho, smax)))
                ts = _distinct_or_error(spec, family, n, make, T)
            return Grid(check_timesteps(ts, T, f"timestep_respacing {spec!r}"), family)
    if text.startswith("ddim"):
        return Grid(_descending(_ddim(spec, text, T)), "ddim")
    if text.startswith("pndm"):
        return Grid(_descending(_pndm(spec, text, T)), "pndm")
    if text.startswith("quad"):
        return Grid(_descending(_quad(spec, text, T)), "quad")
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        raise _bad(spec, f"unknown grid; expected {FAMILIES_HELP}") from None
    return Grid(_descending(_sections(T, counts)), "sections")


def space_timesteps(num_timesteps, section_counts, alphas_cumprod=None):
    """The set of original timesteps to keep when respacing a T-step process (upstream's API).

    :param num_timesteps: T, the number of steps of the base process.
    :param section_counts: a ``--timestep_respacing`` string (every family of this module) or a list
        of per-section counts; upstream's strings keep upstream's results:
        - "ddimN": the smallest stride s with len(range(0, T, s)) == N (never includes T-1);
        - "quadN": ``int(x ** 2)`` for x in ``np.linspace(0, sqrt(0.8 T), N)``; duplicates are an
          error naming the largest N that gives N distinct steps (29 for T = 1000);
        - "pndmN": 1, 1 + T//N, ..., stopping before the last multiple (pndm10 at T = 1000: 801, ..., 101, 1);
        - "N" or "a,b,c": equal sections of [0, T), evenly spaced rounded steps in each.
    :param alphas_cumprod: (T,) base alpha_bar, needed by ``logsnrN`` / ``karrasN``.
    :return: a set of original timesteps (ints in [0, T)).
    """
    return set(parse_grid(section_counts, num_timesteps, alphas_cumprod).timesteps)


def grid_label(spec):
    """A file-name-safe label of a ``--timestep_respacing`` string (upstream strings unchanged):
    ``karras10:5`` -> ``karras10-5``, ``t:999,500,0`` -> ``t3-<8 hex of the list>``,
    ``file:dir/g10.json`` -> ``file-g10``."""
    text = str(spec).strip()
    if text.startswith("t:"):
        return f"t{len(text[2:].split(','))}-{hashlib.sha256(text[2:].encode()).hexdigest()[:8]}"
    if text.startswith("file:"):
        text = "file-" + os.path.splitext(os.path.basename(text[5:]))[0]
    return "".join(c if c.isalnum() or c in "-_.," else "-" for c in text.replace(":", "-"))


def _descending(steps):
    return tuple(sorted((int(s) for s in steps), reverse=True))


def _ddim(spec, text, T):
    desired = _count(spec, text, "ddim")
    for stride in range(1, T):
        if len(range(0, T, stride)) == desired:
            return range(0, T, stride)
    if desired == T:
        return range(T)
    raise _bad(spec, f"no integer stride gives exactly {desired} steps out of {T}; pick another N or use plain '{desired}'")


def _pndm(spec, text, T):
    desired = _count(spec, text, "pndm", low=None)
    if desired < 2 or desired > T:
        raise _bad(spec, f"N must be in [2, {T}]")
    skip = T // desired
    steps = [k + 1 for k in range(0, T, skip)][:-1]
    if not steps or steps[-1] >= T:
        raise _bad(spec, f"gives no valid timestep for T = {T}")
    return steps


def _quadratic(T, count):
    """{int(x ** 2) : x in linspace(0, sqrt(0.8 T), count)} (DDIM repository, ``skip_type="quad"``)."""
    xs = np.linspace(0, np.sqrt(0.8 * T), count) ** 2
    return set(int(v) for v in xs)


def _quad(spec, text, T):
    desired = _count(spec, text, "quad")
    steps = _quadratic(T, min(desired, T + 1))  # more than T steps cannot be distinct
    if len(steps) < desired:
        largest = next(n for n in range(min(desired - 1, T), 0, -1) if len(_quadratic(T, n)) == n)
        got = f"gives only {len(steps)} distinct" if desired <= T else f"cannot give {desired} distinct"
        raise _bad(spec, f"the quadratic grid repeats timesteps near 0 and {got} steps out of {T}; use "
                   f"quad{largest} or smaller, or 'ddimN' / plain 'N'")
    return steps


def _sections(T, section_counts):
    """Upstream's sections: split [0, T) into len(counts) equal parts, counts[i] rounded-even steps in part i."""
    if not section_counts:
        raise ValueError("timestep_respacing: empty section list")
    size_per, extra = T // len(section_counts), T % len(section_counts)
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if section_count < 1 or section_count > size:
            raise ValueError(f"timestep_respacing: cannot take {section_count} steps from a section of "
                             f"{size} timesteps (section {i} of {len(section_counts)}, T={T})")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


# ------------------------------------------------------------------------------------ grid files
def grid_document(timesteps, *, num_timesteps, checkpoint_sha256, solver, **extra):
    """The JSON object of a grid file: {"format", "timesteps" (original, noisiest first), "T",
    "checkpoint_sha256", "solver", **extra}; the grid is validated first."""
    ts = check_timesteps(timesteps, num_timesteps, "grid file")
    return {"format": GRID_FILE_FORMAT, "timesteps": list(ts), "T": int(num_timesteps),
            "checkpoint_sha256": str(checkpoint_sha256), "solver": str(solver), **extra}


def read_grid_file(path, num_timesteps=None):
    """Read and validate a grid file. :raises ValueError: one line naming the file and the problem."""
    what = f"grid file {path}"
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{what}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what}: unreadable ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("format") != GRID_FILE_FORMAT:
        raise ValueError(f"{what}: not a grid file (expected \"format\": \"{GRID_FILE_FORMAT}\")")
    for key in ("timesteps", "T", "checkpoint_sha256", "solver"):
        if key not in doc:
            raise ValueError(f"{what}: missing \"{key}\"")
    if num_timesteps is not None and int(doc["T"]) != int(num_timesteps):
        raise ValueError(f"{what}: made for T = {doc['T']} base steps, but diffusion_steps is {num_timesteps}")
    doc["timesteps"] = list(check_timesteps(doc["timesteps"], int(doc["T"]), what))
    return doc


def is_grid_file(spec):
    """Whether a ``--timestep_respacing`` value names a grid file (``file:PATH``)."""
    return isinstance(spec, str) and spec.strip().startswith("file:")


def check_grid_checkpoint(spec, checkpoint_sha256, solver=None):
    """For a ``file:`` grid, refuse a checkpoint other than the one it was optimised for.

    :param spec: the ``--timestep_respacing`` string (other families pass silently).
    :param checkpoint_sha256: hex sha256 of the checkpoint file being sampled.
    :param solver: the solver about to walk the grid; when it is not the file's ``solver``, the
        return value is a one-line note saying so (allowed: the grid is then not the optimum the
        file's cost was minimised for), else None.
    """
    if not is_grid_file(spec):
        return None
    path = spec.strip()[5:]
    doc = read_grid_file(path)
    if doc["checkpoint_sha256"] != checkpoint_sha256:
        raise ValueError(f"grid file {path} was made for checkpoint sha256 {doc['checkpoint_sha256'][:12]}..., "
                         f"not this --model_path ({str(checkpoint_sha256)[:12]}...); optimise a grid for this "
                         f"checkpoint with scripts/optimize_grid.py")
    if solver and doc["solver"] != solver:
        return (f"note: grid file {path} was optimised for --solver {doc['solver']}, not {solver}: it runs, but is "
                f"not the grid that minimises {solver}'s error (scripts/optimize_grid.py --grid_solver {solver} makes one)")
    return None



# ------------------------------------------------------------------------- the dynamic programme
def best_path(cost, num_steps):
    """The cheapest path of exactly K jumps from node 0 to node M through increasing nodes (GITS).

    :param cost: (M+1, M+1) array; ``cost[i, j]`` (i < j) the cost of one solver step from node i
        to node j (nodes: fine-grid times noisiest first, node M = clean data); entries with
        i >= j are ignored; +inf forbids a jump.
    :param num_steps: K, 1 <= K <= M.
    :return: (nodes, total): the K+1 visited nodes 0 = n_0 < n_1 < ... < n_K = M and the summed cost.
        D[0][0] = 0, D[k][j] = min_{i<j} D[k-1][i] + cost[i, j]; O(K M^2), backtracked.
    """
    c = np.asarray(cost, dtype=np.float64)
    m = c.shape[0] - 1
    if c.shape != (m + 1, m + 1) or m < 1:
        raise ValueError(f"cost must be a square (M+1, M+1) array with M >= 1, got shape {c.shape}")
    if not 1 <= num_steps <= m:
        raise ValueError(f"steps {num_steps}: must be in [1, {m}] for a fine grid of {m} steps")
    upper = np.where(np.triu(np.ones_like(c, dtype=bool), 1), c, np.inf)
    d = np.full(m + 1, np.inf)
    d[0] = 0.0
    back = np.zeros((num_steps + 1, m + 1), dtype=np.int64)
    for k in range(1, num_steps + 1):
        total = d[:, None] + upper          # (i, j): reach i in k-1 jumps, then jump i -> j
        back[k] = np.argmin(total, axis=0)
        d = total[back[k], np.arange(m + 1)]
    if not np.isfinite(d[m]):
        raise ValueError(f"no finite path of {num_steps} steps through the cost matrix")
    nodes = [m]
    for k in range(num_steps, 0, -1):
        nodes.append(int(back[k][nodes[-1]]))
    return nodes[::-1], float(d[m])
