"""Catalogs: every required entry loads, aliases resolve, bad YAML fails with one clear error."""

import pytest

from oserve_rl import catalog
from oserve_rl.errors import ConfigError, UnknownNameError

REQUIRED_GPUS = ["a10g", "l4", "l40s", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "b200", "mi300x"]
REQUIRED_MODELS = ["llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "llama-3.1-8b",
                   "llama-3.1-70b", "opt-30b", "opt-66b", "llama-30b", "codellama-34b", "qwen2.5-7b", "qwen2.5-72b",
                   "mixtral-8x7b"]


@pytest.mark.parametrize("name", REQUIRED_GPUS)
def test_required_gpus(name):
    g = catalog.get_gpu(name)
    assert g.peak_flops > 0 and g.hbm_bytes_per_s > 0 and g.usable_memory_bytes > 0 and g.price_per_gpu_hour > 0


@pytest.mark.parametrize("alias", ["h100", "h100-80gb", "H100-SXM"])
def test_h100_aliases(alias):
    assert catalog.get_gpu(alias).name == "h100-sxm"


@pytest.mark.parametrize("name", REQUIRED_MODELS)
def test_required_models(name):
    m = catalog.get_model(name)
    assert m.num_heads % m.num_kv_heads == 0 and m.total_params >= m.active_params > 0


def test_published_parameter_counts():
    # Sanity against the model cards: 6.7B, 70B (68.98B), Mixtral 46.7B total / 12.9B active.
    assert catalog.get_model("llama-2-7b").total_params == pytest.approx(6.74e9, rel=0.01)
    assert catalog.get_model("llama-2-70b").total_params == pytest.approx(68.98e9, rel=0.01)
    mix = catalog.get_model("mixtral-8x7b")
    assert mix.total_params == pytest.approx(46.7e9, rel=0.01)
    assert mix.active_params == pytest.approx(12.9e9, rel=0.02)


def test_hf_ids_are_aliases():
    assert catalog.get_model("meta-llama/Llama-2-70b-hf").name == "llama-2-70b"
    assert catalog.get_model("Qwen/Qwen2.5-72B-Instruct").name == "qwen2.5-72b"


def test_unknown_names_suggest():
    with pytest.raises(UnknownNameError, match="did you mean.*llama-2-70b"):
        catalog.get_model("llama-2-70")
    with pytest.raises(UnknownNameError, match="unknown GPU 'h10'.*h100"):
        catalog.get_gpu("h10")
    with pytest.raises(UnknownNameError, match="unknown cluster"):
        catalog.get_cluster("h100x9")


def test_cluster_presets():
    assert catalog.get_cluster("a100x8").num_gpus == 8
    h = catalog.get_cluster("h100x32")
    assert h.num_gpus == 32 and h.inter_node_gbps == 200
    assert all(bw == 400 for _, _, bw in h.node_list())
    assert catalog.get_cluster("mixed-a100-h100-h200").gpus_by_type() == {"a100-80gb": 8, "h100-sxm": 8, "h200": 8}


def test_cluster_yaml_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("nodes:\n  - {gpu: h100, count: 2, gpus_per_node: 4}\ninter_node_gbps: 50\n")
    c = catalog.get_cluster(p)
    assert c.num_gpus == 8 and c.name == "c"


def test_unknown_yaml_key_rejected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("nodes:\n  - {gpu: h100, count: 2, gpu_per_node: 4}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml.*gpu_per_node.*unknown key"):
        catalog.get_cluster(p)


def test_bad_values_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("nodes:\n  - {gpu: h100, count: -1}\n")
    with pytest.raises(ConfigError, match=r"count"):
        catalog.get_cluster(p)
    p.write_text("nodes:\n  - {gpu: h1000}\n")
    with pytest.raises(ConfigError, match=r"h1000.*did you mean"):
        catalog.get_cluster(p)


def test_malformed_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("nodes: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        catalog.get_cluster(p)


def test_model_section_validation(tmp_path):
    p = tmp_path / "models.yaml"
    p.write_text("models:\n  bad:\n    num_layers: 2\n    hidden_size: 64\n    num_heads: 6\n    num_kv_heads: 4\n"
                 "    ffn_size: 128\n    vocab_size: 10\n    max_context: 16\n")
    with pytest.raises(ConfigError, match="num_heads 6 is not a multiple of num_kv_heads 4"):
        catalog._load_section(p, "models", catalog.ModelSpec)
