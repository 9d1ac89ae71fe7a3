from der_ray.config import ExpertConfig, ResourcesConfig
from der_ray.experts.actors import actor_name, placement


def _cfg(**res) -> ExpertConfig:
    return ExpertConfig(name="e", source="dir:/m", params_b=0.1, resources=ResourcesConfig(**res))


def test_gpu_cluster_requests_configured_fraction():
    opts = placement(_cfg(num_gpus=0.33, num_cpus=0.5), cluster_gpus=1.0)
    assert opts["num_gpus"] == 0.33 and opts["num_cpus"] == 0.5


def test_cpu_cluster_requests_no_gpu_and_fractional_cpu():
    opts = placement(_cfg(num_gpus=1.0, num_cpus=0.5), cluster_gpus=0.0)
    assert opts["num_gpus"] == 0 and opts["num_cpus"] == 0.5
    assert 3 * opts["num_cpus"] <= 2, "three default experts must fit on two cores"


def test_restarts_without_task_retries_and_thread_env():
    opts = placement(_cfg(max_restarts=3, num_cpus=2), cluster_gpus=0.0)
    assert opts["max_restarts"] == 3 and opts["max_task_retries"] == 0
    assert opts["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "2"
    assert actor_name("e") == "der_ray.expert.e"
