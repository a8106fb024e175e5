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


STEPS = {"SGD": sgd_step, "Adagrad": adagrad_step, "RMSprop": rmsprop_step,
         "Adam": adam_step, "AdamW": adamw_step}
