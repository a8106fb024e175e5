r"""The optimizer family, declared once.

Each `Optimizer` below is the whole story of one optimizer apart from its
element update, which lives in csrc/optimizers/<kernel>.inc.  Everything
else is derived from these declarations:

  - setup.py generates csrc/gd_family.h (one options struct per kernel, its
    fields in declaration order, all double) and csrc/gd_family.inc (the list
    of kernel bodies); gd_kernels.c expands the entry points from that list;
  - gdcore/_core.pyx runs any declared optimizer through one generic path
    (checks, options, state slots, per-param scalars, the cached plan);
  - gdcore/functional.py, gdcore/optim.py and gdcore/torch.py build the
    functional steps (single and ``_multi``), the NumPy classes and the
    torch.optim twins, with real signatures and docstrings;
  - the tests take their option grids, bad-hyperparameter tables and torch
    oracles from here, and the benchmarks their cases and byte counts.

This module is plain Python with no imports from gdcore, so the build can
read it before anything is compiled.

Conventions.  Hyperparameters carry torch.optim's names, defaults and order.
A `pair` hyperparameter (betas, etas, step_sizes) is one tuple in Python and
two doubles in C (`c` names them).  `checks` are torch's validations with
torch's messages; each lists an example of a bad value (`bad`), which the
bad-input tests use.  `state` lists the per-element state buffers in C slot
order (at most three), with `when` saying which options need them and
`init` what they start as (a number, or the name of a hyperparameter).
`scalars` are per-param state of shape () kept, as torch keeps them, in
float32 0-d arrays (torch's default scalar dtype); the C kernel reads them
before the update and writes their new values after.  `step` says how the
kernel uses the 1-based step number: "required" (bias corrections,
schedules), "unused" (counted in state as torch does, not needed by the
math) or "first" (SGD: only whether this step creates the momentum buffer;
no counter is kept).
"""

GE0 = "x >= 0"


class Hyper:
    """One hyperparameter: torch's name and default, and how it reaches C.

    kind: "real", "bool" or "pair".  keyword_only: after ``*`` in the class
    signature.  init_only: used only to initialise state (not passed to the
    kernel, absent from the functional API).  fixed: a value the optimizer
    always has (in defaults and groups, never a constructor argument).
    split: for a pair, take it as two keywords (the C names) in the
    functional API.  test: the values the oracle tests combine.
    """

    def __init__(self, name, default, kind="real", *, c=None, keyword_only=False,
                 init_only=False, fixed=False, split=False, test=None, doc=""):
        self.name, self.default, self.kind = name, default, kind
        self.c = tuple(c) if c else (name,)
        self.keyword_only, self.init_only, self.fixed = keyword_only, init_only, fixed
        self.split = split
        self.test = tuple(test) if test is not None else (default,)
        self.doc = doc
        if kind == "pair" and len(self.c) != 2:
            raise ValueError(f"pair hyperparameter {name} needs two C names")

    def functional_names(self):
        return self.c if self.split else (self.name,)


class Check:
    """A validation: `test(h)` must hold for the converted values h (NaN
    fails every comparison); `message` is formatted with the values as
    given; `bad` is an example that fails it.  `torch`: torch.optim makes
    the same check (False: gdcore is stricter, e.g. NaN)."""

    def __init__(self, test, message, bad, *, torch=True):
        self.test, self.message, self.bad = test, message, dict(bad)
        self.torch = torch


class State:
    """A state buffer of the param's shape and dtype.  `when(h)`: whether
    options h use it (None: always), `needs` says the same in words;
    `init`: its initial value, a number or the name of a hyperparameter;
    `plural`: its name in ``_multi`` forms."""

    def __init__(self, name, *, when=None, needs=None, init=0.0, plural=None):
        self.name, self.when, self.needs, self.init = name, when, needs, init
        self.plural = plural or name + "s"


class Scalar:
    """Per-param state of shape () (torch keeps it in a 0-d tensor)."""

    def __init__(self, name, init, *, plural=None):
        self.name, self.init = name, init
        self.plural = plural or name + "s"


class Optimizer:
    """One optimizer.  `kernel`: the C body (csrc/optimizers/<kernel>.inc);
    several optimizers may share one (Adam and AdamW).  `extra_configs`:
    test configurations beyond the product of the `test` values (branches
    that only some values reach).  `bench`: the setting the benchmarks run."""

    def __init__(self, name, *, kernel, function, hyper, checks=(), state=(), scalars=(),
                 step="required", summary, math, notes="", extra_configs=(), bench=None):
        self.name, self.kernel, self.function = name, kernel, function
        self.hyper = list(hyper)
        self.checks = list(checks)
        self.state = list(state)
        self.scalars = list(scalars)
        self.step = step
        self.summary, self.math, self.notes = summary, math, notes
        self.extra_configs = [dict(c) for c in extra_configs]
        self.bench = dict(bench or {})
        assert step in ("required", "unused", "first"), step
        assert len(self.state) <= 3 and len(self.scalars) <= 2

    @property
    def counts_steps(self):
        """Whether per-param state keeps torch's ``step`` counter."""
        return self.step != "first"

    @property
    def kernel_hyper(self):
        """The hyperparameters the kernel reads, in C field order."""
        return [h for h in self.hyper if not h.init_only]

    def c_fields(self):
        return [c for h in self.kernel_hyper for c in h.c]

    def defaults(self):
        return {h.name: h.default for h in self.hyper}

    def state_in_use(self, values):
        """Names of the state buffers options `values` use."""
        return tuple(s.name for s in self.state if s.when is None or s.when(values))

    def valid(self, values):
        return all(c.test(values) for c in self.checks)


def _lr(default, test=0.01):
    return Hyper("lr", default, test=(test,), doc="learning rate")


def _betas(default=(0.9, 0.999)):
    return Hyper("betas", default, "pair", c=("beta1", "beta2"),
                 doc="decay rates of the first and second moment averages")


def _maximize():
    return Hyper("maximize", False, "bool", keyword_only=True, test=(False, True),
                 doc="ascend instead of descend (the gradient is negated)")


def _weight_decay(default=0, test=(0, 0.1)):
    return Hyper("weight_decay", default, test=test, doc="weight decay coefficient")


def _amsgrad():
    return Hyper("amsgrad", False, "bool", test=(False, True), doc="AMSGrad variant")


def _adam_state():
    """Adam's and AdamW's state buffers (one kernel serves both)."""
    return [State("exp_avg"), State("exp_avg_sq"),
            State("max_exp_avg_sq", when=lambda h: bool(h["amsgrad"]), needs="amsgrad=True")]


LR_CHECK = Check(lambda h: h["lr"] >= 0, "Invalid learning rate: {lr}", {"lr": -1e-3})
EPS_CHECK = Check(lambda h: h["eps"] >= 0, "Invalid epsilon value: {eps}", {"eps": -1e-8})
WD_CHECK = Check(lambda h: h["weight_decay"] >= 0, "Invalid weight_decay value: {weight_decay}",
                 {"weight_decay": -0.1})
BETA_CHECKS = [
    Check(lambda h: 0 <= h["betas"][0] < 1, "Invalid beta parameter at index 0: {betas[0]}",
          {"betas": (1.0, 0.999)}),
    Check(lambda h: 0 <= h["betas"][1] < 1, "Invalid beta parameter at index 1: {betas[1]}",
          {"betas": (0.9, -0.1)}),
]

_ADAM_MATH = r"""
g \leftarrow \pm g\ (+\lambda\theta\ \text{unless decoupled});\quad
\theta \leftarrow (1 - \gamma\lambda)\theta\ \text{(decoupled)}

m \leftarrow \beta_1 m + (1-\beta_1) g;\quad
v \leftarrow \beta_2 v + (1-\beta_2) g^2;\quad
\hat v = \max(\hat v, v)\ \text{(amsgrad) else}\ v

\theta \leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,
    \frac{m}{\sqrt{\hat v}/\sqrt{1-\beta_2^t} + \epsilon}
"""

_ADAM_NOTES = """\
As in torch, eps is added after the bias correction of sqrt(v), and amsgrad
keeps the max of the uncorrected v.  The kernel computes the equal
theta - (lr sqrt(1 - beta2^t) / (1 - beta1^t)) m / (sqrt(v) + eps sqrt(1 - beta2^t)),
which saves a division per element, with its scalars in double precision."""


FAMILY = [
    Optimizer(
        "SGD", kernel="sgd", function="sgd", step="first",
        summary="Stochastic gradient descent, optionally with (Nesterov) momentum "
                "(torch.optim.SGD). Full-batch gradient descent is SGD fed the full gradient.",
        hyper=[_lr(1e-3, test=0.05),
               Hyper("momentum", 0, test=(0, 0.9), doc="momentum factor"),
               Hyper("dampening", 0, test=(0, 0.3), doc="dampening of the momentum"),
               _weight_decay(),
               Hyper("nesterov", False, "bool", test=(False, True),
                     doc="Nesterov momentum"),
               _maximize()],
        checks=[LR_CHECK,
                Check(lambda h: h["momentum"] >= 0, "Invalid momentum value: {momentum}",
                      {"momentum": -0.9}),
                WD_CHECK,
                Check(lambda h: h["dampening"] == h["dampening"],
                      "Invalid dampening value: {dampening}", {"dampening": float("nan")},
                      torch=False),
                Check(lambda h: not h["nesterov"] or (h["momentum"] > 0 and h["dampening"] == 0),
                      "Nesterov momentum requires a momentum and zero dampening",
                      {"nesterov": True, "momentum": 0})],
        state=[State("momentum_buffer", when=lambda h: h["momentum"] != 0,
                     needs="momentum != 0")],
        math=r"""
d = \pm g + \lambda\theta;\quad
b_1 = d,\ b_t = \mu b_{t-1} + (1-\tau) d;\quad
\theta \leftarrow \theta - \gamma\,(d + \mu b_t\ \text{if nesterov else}\ b_t)
""",
        notes="On the step that creates the momentum buffer it is set to d (torch's "
              "convention: no dampening on the first step), whatever it held; without "
              "momentum, theta <- theta - lr d.",
        bench=dict(lr=0.01, momentum=0.9)),

    Optimizer(
        "Adagrad", kernel="adagrad", function="adagrad",
        summary="Adagrad (torch.optim.Adagrad).",
        hyper=[_lr(1e-2, test=0.1),
               Hyper("lr_decay", 0, test=(0, 0.05), doc="learning rate decay"),
               _weight_decay(),
               Hyper("initial_accumulator_value", 0, init_only=True, test=(0, 0.1),
                     doc="initial value of the sum of squares"),
               Hyper("eps", 1e-10, doc="term added to the denominator"),
               _maximize()],
        checks=[LR_CHECK,
                Check(lambda h: h["lr_decay"] >= 0, "Invalid lr_decay value: {lr_decay}",
                      {"lr_decay": -1}),
                WD_CHECK,
                Check(lambda h: h["initial_accumulator_value"] >= 0,
                      "Invalid initial_accumulator_value value: {initial_accumulator_value}",
                      {"initial_accumulator_value": -1}),
                EPS_CHECK],
        state=[State("sum", init="initial_accumulator_value")],
        math=r"""
g \leftarrow \pm g + \lambda\theta;\quad s \leftarrow s + g^2;\quad
\theta \leftarrow \theta - \frac{\gamma}{1 + (t-1)\eta}\,\frac{g}{\sqrt{s} + \epsilon}
""",
        bench=dict(lr=0.01)),

    Optimizer(
        "RMSprop", kernel="rmsprop", function="rmsprop", step="unused",
        summary="RMSprop (torch.optim.RMSprop).",
        hyper=[_lr(1e-2),
               Hyper("alpha", 0.99, doc="smoothing constant"),
               Hyper("eps", 1e-8, doc="term added to the denominator (outside the root)"),
               _weight_decay(),
               Hyper("momentum", 0, test=(0, 0.9), doc="momentum factor"),
               Hyper("centered", False, "bool", test=(False, True),
                     doc="normalise by the estimated variance of the gradient"),
               _maximize()],
        checks=[LR_CHECK, EPS_CHECK,
                Check(lambda h: h["momentum"] >= 0, "Invalid momentum value: {momentum}",
                      {"momentum": -0.5}),
                WD_CHECK,
                Check(lambda h: h["alpha"] >= 0, "Invalid alpha value: {alpha}",
                      {"alpha": -0.5})],
        state=[State("square_avg"),
               State("momentum_buffer", when=lambda h: h["momentum"] > 0,
                     needs="momentum > 0"),
               State("grad_avg", when=lambda h: bool(h["centered"]), needs="centered=True")],
        math=r"""
g \leftarrow \pm g + \lambda\theta;\quad v \leftarrow \alpha v + (1-\alpha) g^2;\quad
\bar g \leftarrow \mathrm{lerp}(\bar g, g, 1-\alpha)\ \text{(centered)}

a = \sqrt{v - \bar g^2} + \epsilon\ \text{(centered) or}\ \sqrt{v} + \epsilon;\quad
b \leftarrow \mu b + g / a,\ \theta \leftarrow \theta - \gamma b\ (\mu > 0)
\ \text{else}\ \theta \leftarrow \theta - \gamma g / a
""",
        notes="eps is added outside the square root, as in torch (some texts put it inside).",
        extra_configs=[dict(lr=0.01, alpha=0.3, centered=True, momentum=0.5),
                       dict(lr=0.01, alpha=0.9, eps=1e-3)],
        bench=dict(lr=0.01)),

    Optimizer(
        "Adam", kernel="adam", function="adam",
        summary="Adam (torch.optim.Adam), with optional AMSGrad and decoupled weight decay.",
        hyper=[_lr(1e-3), _betas(),
               Hyper("eps", 1e-8, doc="term added to the denominator"),
               _weight_decay(),
               _amsgrad(),
               _maximize(),
               Hyper("decoupled_weight_decay", False, "bool", keyword_only=True,
                     test=(False, True), doc="AdamW-style decay of the param")],
        checks=[LR_CHECK, EPS_CHECK, *BETA_CHECKS, WD_CHECK],
        state=_adam_state(),
        math=_ADAM_MATH, notes=_ADAM_NOTES,
        extra_configs=[dict(lr=0.01, betas=(0.3, 0.9)),
                       dict(lr=0.02, betas=(0.8, 0.99), eps=1e-3, amsgrad=True)],
        bench=dict(lr=1e-3)),

    Optimizer(
        "AdamW", kernel="adam", function="adamw",
        summary="AdamW (torch.optim.AdamW): Adam with decoupled weight decay, "
                "theta <- (1 - lr weight_decay) theta before the Adam update.",
        hyper=[_lr(1e-3), _betas(),
               Hyper("eps", 1e-8, doc="term added to the denominator"),
               _weight_decay(1e-2, test=(0, 0.1, 1e-2)),
               _amsgrad(),
               _maximize(),
               Hyper("decoupled_weight_decay", True, "bool", fixed=True)],
        checks=[LR_CHECK, EPS_CHECK, *BETA_CHECKS, WD_CHECK,
                Check(lambda h: h["decoupled_weight_decay"],
                      "AdamW requires decoupled_weight_decay=True",
                      {"decoupled_weight_decay": False})],
        state=_adam_state(),
        math=_ADAM_MATH, notes=_ADAM_NOTES,
        bench=dict(lr=1e-3)),

    Optimizer(
        "Adadelta", kernel="adadelta", function="adadelta", step="unused",
        summary="Adadelta (torch.optim.Adadelta).",
        hyper=[Hyper("lr", 1.0, test=(1.0, 0.5), doc="scale of the update"),
               Hyper("rho", 0.9, doc="decay rate of the running averages"),
               Hyper("eps", 1e-6, doc="term added inside both square roots"),
               _weight_decay(),
               _maximize()],
        checks=[LR_CHECK,
                Check(lambda h: 0 <= h["rho"] <= 1, "Invalid rho value: {rho}", {"rho": 1.5}),
                EPS_CHECK, WD_CHECK],
        state=[State("square_avg"), State("acc_delta")],
        math=r"""
g \leftarrow \pm g + \lambda\theta;\quad v \leftarrow \rho v + (1-\rho) g^2;\quad
\Delta = \frac{\sqrt{u + \epsilon}}{\sqrt{v + \epsilon}}\, g

u \leftarrow \rho u + (1-\rho)\Delta^2;\quad \theta \leftarrow \theta - \gamma\Delta
""",
        notes="v is square_avg, u is acc_delta; eps sits inside both roots, as in torch.",
        extra_configs=[dict(lr=1.0, rho=0.3, eps=1e-3)],
        bench=dict(lr=1.0)),

    Optimizer(
        "Adamax", kernel="adamax", function="adamax",
        summary="Adamax, Adam with the infinity norm (torch.optim.Adamax).",
        hyper=[_lr(2e-3), _betas(),
               Hyper("eps", 1e-8, doc="term added to |g| before the max"),
               _weight_decay(),
               _maximize()],
        checks=[LR_CHECK, EPS_CHECK, *BETA_CHECKS, WD_CHECK],
        state=[State("exp_avg"), State("exp_inf")],
        math=r"""
g \leftarrow \pm g + \lambda\theta;\quad m \leftarrow \beta_1 m + (1-\beta_1) g;\quad
u \leftarrow \max(\beta_2 u, |g| + \epsilon)

\theta \leftarrow \theta - \frac{\gamma}{1-\beta_1^t}\,\frac{m}{u}
""",
        notes="eps is added to |g| inside the max (torch's form), and a NaN in either "
              "argument of the max propagates, as torch.maximum does.",
        extra_configs=[dict(lr=0.01, betas=(0.3, 0.5), eps=1e-3)],
        bench=dict(lr=2e-3)),

    Optimizer(
        "ASGD", kernel="asgd", function="asgd",
        summary="Averaged stochastic gradient descent (torch.optim.ASGD).",
        hyper=[_lr(1e-2),
               Hyper("lambd", 1e-4, test=(1e-4, 1e-2), doc="decay term"),
               Hyper("alpha", 0.75, doc="power of the eta schedule"),
               Hyper("t0", 1e6, test=(1e6, 3), doc="step at which averaging starts"),
               _weight_decay(),
               _maximize()],
        checks=[LR_CHECK, WD_CHECK],
        state=[State("ax")],
        scalars=[Scalar("eta", "lr"), Scalar("mu", 1.0)],
        math=r"""
g \leftarrow \pm g + \lambda_{wd}\theta;\quad
\theta \leftarrow (1 - \lambda\eta_{t-1})\theta - \eta_{t-1} g

\bar\theta \leftarrow \bar\theta + \mu_{t-1}(\theta - \bar\theta)\ (\mu_{t-1} \ne 1)
\ \text{else}\ \bar\theta \leftarrow \theta

\eta_t = \frac{\gamma}{(1 + \lambda\gamma t)^\alpha};\quad \mu_t = \frac{1}{\max(1, t - t_0)}
""",
        notes="ax is the average theta-bar.  eta (starting at lr) and mu (starting at 1) "
              "are per-param 0-d float32 arrays, torch's scalar state: the update uses the "
              "values stored by the previous step, and the new ones are computed in double "
              "and rounded to float32, as torch stores them.",
        extra_configs=[dict(lr=0.05, lambd=0.01, alpha=0.5, t0=0, weight_decay=0.1)],
        bench=dict(lr=1e-2, t0=0)),

    Optimizer(
        "NAdam", kernel="nadam", function="nadam",
        summary="NAdam, Adam with Nesterov momentum (torch.optim.NAdam).",
        hyper=[_lr(2e-3), _betas(),
               Hyper("eps", 1e-8, doc="term added to the denominator"),
               _weight_decay(),
               Hyper("momentum_decay", 4e-3, test=(4e-3, 0.1), doc="momentum decay psi"),
               Hyper("decoupled_weight_decay", False, "bool", test=(False, True),
                     doc="AdamW-style decay of the param"),
               _maximize()],
        checks=[LR_CHECK, EPS_CHECK, *BETA_CHECKS, WD_CHECK,
                Check(lambda h: h["momentum_decay"] >= 0,
                      "Invalid momentum_decay value: {momentum_decay}", {"momentum_decay": -1})],
        state=[State("exp_avg"), State("exp_avg_sq")],
        scalars=[Scalar("mu_product", 1.0)],
        math=r"""
\mu_t = \beta_1 (1 - \tfrac12 0.96^{t\psi});\quad
\Pi_t = \Pi_{t-1}\mu_t;\quad
m \leftarrow \beta_1 m + (1-\beta_1) g;\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2

\theta \leftarrow \theta - \gamma\Big(\frac{1-\mu_t}{1-\Pi_t}\,g
    + \frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}}\,m\Big)\Big/\Big(\sqrt{v/(1-\beta_2^t)} + \epsilon\Big)
""",
        notes="g is negated (maximize) and decayed as in Adam (decoupled or not).  "
              "mu_product is the per-param 0-d float32 array torch keeps: mu_t is rounded "
              "to float32 and the product taken in float32, as torch computes it.",
        extra_configs=[dict(lr=0.01, betas=(0.3, 0.9), eps=1e-3)],
        bench=dict(lr=2e-3)),

    Optimizer(
        "RAdam", kernel="radam", function="radam",
        summary="RAdam, rectified Adam (torch.optim.RAdam).",
        hyper=[_lr(1e-3), _betas(),
               Hyper("eps", 1e-8, doc="term added to the denominator"),
               _weight_decay(),
               Hyper("decoupled_weight_decay", False, "bool", test=(False, True),
                     doc="AdamW-style decay of the param"),
               _maximize()],
        checks=[LR_CHECK, EPS_CHECK, *BETA_CHECKS, WD_CHECK],
        state=[State("exp_avg"), State("exp_avg_sq")],
        math=r"""
m \leftarrow \beta_1 m + (1-\beta_1) g;\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2;\quad
\rho_\infty = \frac{2}{1-\beta_2} - 1;\quad
\rho_t = \rho_\infty - \frac{2t\beta_2^t}{1-\beta_2^t}

\theta \leftarrow \theta - \frac{\gamma\, m}{1-\beta_1^t}\cdot
\begin{cases} r_t \frac{\sqrt{1-\beta_2^t}}{\sqrt v + \epsilon} & \rho_t > 5 \\
1 & \text{otherwise}\end{cases},\quad
r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}
""",
        notes="g is negated (maximize) and decayed as in Adam (decoupled or not).  The "
              "branch is decided once per step (per param), never per element.",
        extra_configs=[dict(lr=0.01, betas=(0.5, 0.6), eps=1e-3)],
        bench=dict(lr=1e-3)),

    Optimizer(
        "Rprop", kernel="rprop", function="rprop", step="unused",
        summary="Resilient backpropagation (torch.optim.Rprop).",
        hyper=[Hyper("lr", 1e-2, init_only=True, test=(0.01,),
                     doc="initial step size"),
               Hyper("etas", (0.5, 1.2), "pair", c=("etaminus", "etaplus"),
                     doc="multiplicative decrease and increase of the step size"),
               Hyper("step_sizes", (1e-6, 50), "pair", c=("step_size_min", "step_size_max"),
                     split=True, doc="bounds of the step size"),
               _maximize()],
        checks=[LR_CHECK,
                Check(lambda h: 0 < h["etas"][0] < 1 < h["etas"][1],
                      "Invalid eta values: {etas[0]}, {etas[1]}", {"etas": (1.5, 1.2)})],
        state=[State("prev"), State("step_size", init="lr")],
        math=r"""
s = \mathrm{sign}(\pm g \cdot g_{prev});\quad
\Delta \leftarrow \mathrm{clamp}(\Delta \cdot \{\eta_+, \eta_-, 1\}_{s = +, -, 0},\
    \Delta_{min}, \Delta_{max})

g' = 0\ \text{where}\ s < 0\ \text{else}\ \pm g;\quad
\theta \leftarrow \theta - \mathrm{sign}(g')\,\Delta;\quad g_{prev} \leftarrow g'
""",
        notes="step_size (Delta) starts at lr; lr is used for nothing else.  NaN in the "
              "gradient propagates to the step size and the param, as in torch.",
        extra_configs=[dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.02))],
        bench=dict(lr=1e-2)),
]

BY_NAME = {o.name: o for o in FAMILY}


def kernels():
    """Each C kernel once, in first-declared order, with the optimizer that
    declares its options struct (the first to use it) and its scalar count."""
    seen = {}
    for o in FAMILY:
        if o.kernel not in seen:
            seen[o.kernel] = o
        elif seen[o.kernel].c_fields() != o.c_fields():
            raise ValueError(f"{o.name} shares kernel {o.kernel} with {seen[o.kernel].name} "
                             "but declares different C fields")
    return list(seen.values())


def kernel_index(kernel):
    return [o.kernel for o in kernels()].index(kernel)


# ------------------------------------------------------------ generation
def c_header():
    """csrc/gd_family.h: the options struct of every kernel and the X-macro
    list of kernels (name, index, number of per-param scalars)."""
    lines = ["/* gd_family.h: GENERATED by setup.py from gdcore/family.py; do not edit.",
             " *",
             " * One options struct per kernel, its fields in declaration order, every",
             " * field a double (flags are 0 or 1), so a double array of the same length",
             " * has the same layout.  GD_FAMILY(X) lists the kernels as",
             " * X(name, index, number of per-param scalars). */",
             "#ifndef GD_FAMILY_H", "#define GD_FAMILY_H", ""]
    ks = kernels()
    for o in ks:
        lines.append(f"typedef struct gd_{o.kernel}_options {{ double "
                     + ", ".join(o.c_fields()) + f"; }} gd_{o.kernel}_options;")
    lines.append("")
    lines.append("#define GD_FAMILY(X) \\")
    for i, o in enumerate(ks):
        lines.append(f"    X({o.kernel}, {i}, {len(o.scalars)}) \\")
    lines.append("")
    lines.append(f"#define GD_KERNEL_COUNT {len(ks)}")
    lines.append(f"#define GD_MAX_OPTIONS {max(len(o.c_fields()) for o in ks)}")
    lines += ["", "#endif /* GD_FAMILY_H */", ""]
    return "\n".join(lines)


def c_bodies():
    """csrc/gd_family.inc: the kernel bodies, included by gd_optimizers.inc."""
    return "\n".join(["/* gd_family.inc: GENERATED by setup.py from gdcore/family.py. */"]
                     + [f'#include "optimizers/{o.kernel}.inc"' for o in kernels()]) + "\n"


# ------------------------------------------------- Python signatures, stubs
def _annotation(h):
    return {"real": "float", "bool": "bool", "pair": "tuple[float, float]"}[h.kind]


def functional_parameters(decl, multi, annotate=False):
    """The parameter list of ``<function>`` / ``<function>_multi`` (used to
    build them in gdcore/functional.py and in the type stubs)."""
    one = (lambda x: x.plural) if multi else (lambda x: x.name)
    buffers = "Sequence[np.ndarray]" if multi else "np.ndarray"
    grads = "Sequence[ArrayLike]" if multi else "ArrayLike"
    ann = (lambda text: f": {text}") if annotate else (lambda text: "")
    out = [f"{'params' if multi else 'param'}{ann(buffers)}",
           f"{'grads' if multi else 'grad'}{ann(grads)}"]
    out += [one(s) + ann(buffers) for s in decl.state if s.when is None]
    out += [one(s) + ann(buffers) for s in decl.scalars]
    out += [f"{one(s)}{ann('Optional[' + buffers + ']')}=None"
            for s in decl.state if s.when is not None]
    keywords = []
    step = "steps" if multi else "step"
    step_type = "Union[int, Sequence[int]]" if multi else "int"
    if decl.step == "required":
        keywords.append(step + ann(step_type))
    else:       # "first": needed with momentum; both: with stochastic rounding
        keywords.append(f"{step}{ann('Optional[' + step_type + ']')}=None")
    for h in decl.hyper:
        if h.init_only or h.fixed:
            continue
        if h.split:
            keywords += [f"{c}{ann('float')}={d!r}" for c, d in zip(h.c, h.default)]
        else:
            keywords.append(f"{h.name}{ann(_annotation(h))}={h.default!r}")
    keywords += [f"{name}{ann(kind)}={default}"
                 for name, kind, default in storage_parameters(multi)]
    return out + ["*"] + keywords


def storage_parameters(multi):
    """The keywords every functional step takes for 16-bit params (the same
    for every optimizer: they concern how results are stored, not the math):
    (name, annotation, default source)."""
    buffers = "Sequence[np.ndarray]" if multi else "np.ndarray"
    return [("rounding", "str", "'nearest'"),
            ("seed", "int", "0"),
            ("compensations" if multi else "compensation", f"Optional[{buffers}]", "None"),
            ("streams" if multi else "stream",
             "Optional[Sequence[int]]" if multi else "int", "None" if multi else "0")]


def class_parameters(decl, annotate=False):
    """The constructor parameters of the NumPy class (torch's, without its
    implementation selectors foreach, fused, capturable, differentiable)."""
    ann = (lambda h: f": {_annotation(h)}") if annotate else (lambda h: "")
    arguments = [h for h in decl.hyper if not h.fixed]
    positional = [f"{h.name}{ann(h)}={h.default!r}" for h in arguments if not h.keyword_only]
    keyword = [f"{h.name}{ann(h)}={h.default!r}" for h in arguments if h.keyword_only]
    params = "params: Iterable[Any]" if annotate else "params"
    storage = [f"{name}{': ' + kind if annotate else ''}={default}"
               for name, kind, default in STORAGE_OPTIONS]
    return ["self", params] + positional + ["*"] + keyword + storage


#: The constructor keywords every class takes for 16-bit params (gdcore's
#: additions to torch's signatures; kept in each param group):
#: (name, annotation, default source).
STORAGE_OPTIONS = [("state_dtype", "Optional[Any]", "None"),
                   ("rounding", "str", "'nearest'"),
                   ("seed", "int", "0")]


def python_stubs():
    """Type stubs for the modules whose contents are built at import
    (gdcore/functional.pyi, gdcore/optim.pyi), written by setup.py."""
    head = ["# GENERATED by setup.py from gdcore/family.py; do not edit.",
            "from typing import Any, Iterable, Optional, Sequence, Union", "",
            "import numpy as np", "from numpy.typing import ArrayLike", ""]
    functional = list(head)
    for decl in FAMILY:
        for multi in (False, True):
            name = decl.function + ("_multi" if multi else "")
            functional.append(f"def {name}({', '.join(functional_parameters(decl, multi, True))}"
                              ") -> None: ...")
    optim = head + [
        "class ParamState:",
        "    def __getitem__(self, param: np.ndarray) -> dict[str, Any]: ...",
        "    def __contains__(self, param: object) -> bool: ...",
        "    def __len__(self) -> int: ...", "",
        "class Optimizer:",
        "    defaults: dict[str, Any]",
        "    param_groups: list[dict[str, Any]]",
        "    state: ParamState",
        "    last_step_created_state: bool",
        "    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None: ...",
        "    def add_param_group(self, param_group: dict[str, Any]) -> None: ...",
        "    def step(self, grads: Sequence[Optional[ArrayLike]]) -> None: ...",
        "    def state_dict(self) -> dict[str, Any]: ...",
        "    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...", ""]
    for decl in FAMILY:
        optim += [f"class {decl.name}(Optimizer):",
                  f"    def __init__({', '.join(class_parameters(decl, True))}) -> None: ...",
                  ""]
    return {"functional.pyi": "\n".join(functional) + "\n", "optim.pyi": "\n".join(optim)}
