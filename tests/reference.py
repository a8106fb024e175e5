"""Independent float64 NumPy reference of each optimizer, written from the
update rules as torch.optim documents them (torch/optim/<name>.py), one step
at a time, on whole arrays.  Not shipped; used only as a test oracle.

Each `*_step` takes the param and the state dict (float64 arrays, updated in
place), the gradient and the hyperparameters, and advances state["step"].
"""
import numpy as np


def sgd_step(p, state, g, *, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
             nesterov=False, maximize=False):
    d = np.array(-g if maximize else g, dtype=np.float64)
    if weight_decay != 0:
        d = d + weight_decay * p
    if momentum != 0:
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = np.array(d)          # no dampening on step 1
        else:
            b = state["momentum_buffer"]
            b[...] = momentum * b + (1 - dampening) * d
        b = state["momentum_buffer"]
        d = d + momentum * b if nesterov else b
    p -= lr * d


def adagrad_step(p, state, g, *, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, maximize=False):
    state.setdefault("step", 0)
    state.setdefault("sum", np.full_like(p, initial_accumulator_value))
    state["step"] += 1
    t = state["step"]
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + weight_decay * p
    clr = lr / (1 + (t - 1) * lr_decay)
    state["sum"] += g * g
    p -= clr * g / (np.sqrt(state["sum"]) + eps)


def rmsprop_step(p, state, g, *, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0,
                 momentum=0.0, centered=False, maximize=False):
    state.setdefault("step", 0)
    state["step"] += 1
    v = state.setdefault("square_avg", np.zeros_like(p))
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + weight_decay * p
    v[...] = alpha * v + (1 - alpha) * g * g
    if centered:
        ga = state.setdefault("grad_avg", np.zeros_like(p))
        ga[...] = alpha * ga + (1 - alpha) * g
        avg = np.sqrt(v - ga * ga) + eps
    else:
        avg = np.sqrt(v) + eps
    if momentum > 0:
        b = state.setdefault("momentum_buffer", np.zeros_like(p))
        b[...] = momentum * b + g / avg
        p -= lr * b
    else:
        p -= lr * g / avg


def adam_step(p, state, g, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
              amsgrad=False, maximize=False, decoupled_weight_decay=False):
    beta1, beta2 = betas
    state.setdefault("step", 0)
    state["step"] += 1
    t = state["step"]
    m = state.setdefault("exp_avg", np.zeros_like(p))
    v = state.setdefault("exp_avg_sq", np.zeros_like(p))
    g = -g if maximize else g
    if weight_decay != 0:
        if decoupled_weight_decay:
            p *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * p
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    if amsgrad:
        vmax = state.setdefault("max_exp_avg_sq", np.zeros_like(p))
        np.maximum(vmax, v, out=vmax)
        v = vmax
    m_hat = m / (1 - beta1 ** t)
    p -= lr * m_hat / (np.sqrt(v) / np.sqrt(1 - beta2 ** t) + eps)


def adamw_step(p, state, g, *, weight_decay=1e-2, **options):
    adam_step(p, state, g, weight_decay=weight_decay, decoupled_weight_decay=True, **options)


def adadelta_step(p, state, g, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False):
    state.setdefault("step", 0)
    state["step"] += 1
    v = state.setdefault("square_avg", np.zeros_like(p))
    u = state.setdefault("acc_delta", np.zeros_like(p))
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + weight_decay * p
    v[...] = rho * v + (1 - rho) * g * g
    delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
    u[...] = rho * u + (1 - rho) * delta * delta
    p -= lr * delta


def adamax_step(p, state, g, *, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                maximize=False):
    """eps goes inside the max: u = max(beta2 * u, |g| + eps).  A NaN on either
    side of the max gives NaN (torch.maximum, like np.maximum)."""
    beta1, beta2 = betas
    state.setdefault("step", 0)
    state["step"] += 1
    t = state["step"]
    m = state.setdefault("exp_avg", np.zeros_like(p))
    u = state.setdefault("exp_inf", np.zeros_like(p))
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + weight_decay * p
    m[...] = beta1 * m + (1 - beta1) * g
    np.maximum(beta2 * u, np.abs(g) + eps, out=u)
    p -= lr / (1 - beta1 ** t) * m / u


def asgd_step(p, state, g, *, lr=1e-2, lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0.0,
              maximize=False):
    """eta and mu are float32 scalars, as torch keeps them (its default scalar
    dtype), whatever the param dtype.  The step uses the eta and mu of the previous
    step (eta = lr, mu = 1 on step 1), then both are recomputed in float64 from the
    new step count and rounded to float32.  ax is a copy of p while mu == 1."""
    state.setdefault("step", 0)
    state.setdefault("eta", np.array(lr, dtype=np.float32))
    state.setdefault("mu", np.array(1.0, dtype=np.float32))
    ax = state.setdefault("ax", np.zeros_like(p))
    state["step"] += 1
    t = state["step"]
    eta, mu = float(state["eta"]), float(state["mu"])
    g = -g if maximize else g
    if weight_decay != 0:
        g = g + weight_decay * p
    p *= 1 - lambd * eta
    p -= eta * g
    if mu != 1:
        ax += (p - ax) * mu
    else:
        ax[...] = p
    state["eta"] = np.array(lr / (1 + lambd * lr * t) ** alpha, dtype=np.float32)
    state["mu"] = np.array(1 / max(1, t - t0), dtype=np.float32)


def nadam_step(p, state, g, *, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
               momentum_decay=4e-3, decoupled_weight_decay=False, maximize=False):
    """mu_product is a float32 scalar, as torch keeps it: each step rounds mu to
    float32, then the product to float32 (a float32 tensor times a Python float).
    The rest is float64, from the float32 value of mu_product."""
    beta1, beta2 = betas
    state.setdefault("step", 0)
    state.setdefault("mu_product", np.array(1.0, dtype=np.float32))
    state["step"] += 1
    t = state["step"]
    m = state.setdefault("exp_avg", np.zeros_like(p))
    v = state.setdefault("exp_avg_sq", np.zeros_like(p))
    g = -g if maximize else g
    if weight_decay != 0:
        if decoupled_weight_decay:
            p *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * p
    mu = beta1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    state["mu_product"] = np.array(state["mu_product"] * np.float32(mu), dtype=np.float32)
    mu_product = float(state["mu_product"])
    mu_product_next = mu_product * mu_next
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    denom = np.sqrt(v / (1 - beta2 ** t)) + eps
    p -= lr * (1 - mu) / (1 - mu_product) * g / denom
    p -= lr * mu_next / (1 - mu_product_next) * m / denom


def radam_step(p, state, g, *, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
               decoupled_weight_decay=False, maximize=False):
    """Rectified when rho_t > 5, with eps added to sqrt(v) before the bias
    correction: lr * rect * m_hat * sqrt(1 - beta2^t) / (sqrt(v) + eps); otherwise
    plain lr * m_hat."""
    beta1, beta2 = betas
    state.setdefault("step", 0)
    state["step"] += 1
    t = state["step"]
    m = state.setdefault("exp_avg", np.zeros_like(p))
    v = state.setdefault("exp_avg_sq", np.zeros_like(p))
    g = -g if maximize else g
    if weight_decay != 0:
        if decoupled_weight_decay:
            p *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * p
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
    m_hat = m / bc1
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2 ** t / bc2
    if rho_t > 5:
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5
        p -= m_hat * lr * (bc2 ** 0.5 / (np.sqrt(v) + eps)) * rect
    else:
        p -= m_hat * lr


def _torch_sign(x):
    """torch.sign: NaN -> 0 (np.sign gives NaN)."""
    return (x > 0).astype(np.float64) - (x < 0)


def rprop_step(p, state, g, *, lr=1e-2, etas=(0.5, 1.2), step_sizes=(1e-6, 50), maximize=False):
    """Per element s = sign(g * prev): s > 0 scales step_size by etaplus, s < 0 by
    etaminus and then treats g as 0 (no move, prev = 0), s == 0 leaves it; then
    clamp to step_sizes.  As torch.sign(NaN) == 0, a NaN in g or prev counts as
    s == 0 and a NaN g does not move p, but it is stored in prev."""
    etaminus, etaplus = etas
    state.setdefault("step", 0)
    state["step"] += 1
    prev = state.setdefault("prev", np.zeros_like(p))
    step_size = state.setdefault("step_size", np.full_like(p, lr))
    g = -g if maximize else g
    s = _torch_sign(g * prev)
    step_size *= np.where(s > 0, etaplus, np.where(s < 0, etaminus, 1.0))
    np.clip(step_size, step_sizes[0], step_sizes[1], out=step_size)
    g = np.where(s < 0, 0.0, g)
    p -= _torch_sign(g) * step_size
    prev[...] = g


STEPS = {"SGD": sgd_step, "Adagrad": adagrad_step, "RMSprop": rmsprop_step,
         "Adam": adam_step, "AdamW": adamw_step, "Adadelta": adadelta_step,
         "Adamax": adamax_step, "ASGD": asgd_step, "NAdam": nadam_step,
         "RAdam": radam_step, "Rprop": rprop_step}
