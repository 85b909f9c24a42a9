"""device.json (graphopt.device/1): round trip, bad files refused with one line, the matmul curve."""
import copy
import json

import pytest
import torch

from graphopt.costmodel.device import roofline_seconds
from graphopt.costmodel.device_file import (
    SCHEMA,
    DeviceSpecError,
    load_device_spec,
    save_device_spec,
    spec_from_dict,
)
from graphopt.costmodel.node_time import matmul_rate, node_seconds
from graphopt.errors import GraphoptError


def _doc(device_type="cpu"):
    """A device document as calibrate writes it, with round numbers to check against."""
    sizes = [{"n": n, "flops": 2 * n ** 3, "seconds": 2 * n ** 3 / r, "flops_per_s": r}
             for n, r in ((128, 20e9), (256, 40e9), (512, 60e9))]
    link = {"backend": "gloo", "world_size": 2, "alpha_s": 50e-6, "beta_s_per_byte": 1e-9,
            "fit_rel_err_max": 0.1, "fit_rel_err_rms": 0.05,
            "samples": [{"bytes": 1024, "seconds": 51e-6}, {"bytes": 1 << 20, "seconds": 1.1e-3}]}
    allreduce = dict(link, alpha_s=80e-6, beta_s_per_byte=2e-9, ring_alpha_s=40e-6,
                     ring_beta_s_per_byte=2e-9)
    return {"schema": SCHEMA, "device_type": device_type, "name": "test machine",
            "machine": {"hostname": "h", "cpu_model": "c", "cores": 2, "threads_per_process": 1,
                        "torch_version": "2", "gpu_model": None, "memory_bytes": 8 << 30,
                        "world_size": 2},
            "compute": {"matmul": {"float32": {"best_flops_per_s": 60e9, "sizes": sizes},
                                   "bfloat16": {"best_flops_per_s": 90e9, "sizes": []}},
                        "vector_flops_per_s": 5e9},
            "memory": {"bandwidth_bytes_per_s": 10e9, "copy_bytes_per_s": 9e9,
                       "add_bytes_per_s": 10e9},
            "overhead": {"op_seconds": 4e-6, "view_seconds": 1e-6},
            "links": {"p2p": link, "allreduce": allreduce},
            "calibration": {"seconds": 1.0, "quick": False}}


def test_round_trip(tmp_path):
    path = save_device_spec(_doc(), tmp_path / "sub" / "device.json")
    spec = load_device_spec(path, device_type="cpu")
    assert spec.device_type == "cpu" and spec.name == "test machine"
    assert spec.matmul_peak("float32") == 60e9 and spec.matmul_peak("bfloat16") == 90e9
    assert spec.vector_flops == 5e9 and spec.bandwidth == 10e9 and spec.memory == 8 << 30
    assert spec.launch_seconds == 4e-6 and spec.view_seconds == 1e-6
    assert spec.p2p_link.alpha == 50e-6 and spec.p2p_link.beta == pytest.approx(1e9)
    assert spec.p2p_link.seconds(1 << 20) == pytest.approx(50e-6 + (1 << 20) * 1e-9)
    assert spec.allreduce_link.alpha == 40e-6 and spec.allreduce_link.beta == pytest.approx(5e8)
    assert json.loads(path.read_text()) == _doc()
    # The per-op overhead reaches the roofline every estimate goes through.
    assert roofline_seconds(0, 10_000, "elementwise", "float32", spec) == pytest.approx(1e-6 + 4e-6)


def test_matmul_rate_follows_the_measured_curve():
    spec = spec_from_dict(_doc())
    f128, f256 = 2 * 128 ** 3, 2 * 256 ** 3
    assert matmul_rate(spec, "float32", f128) == 20e9
    assert matmul_rate(spec, "float32", f256) == 40e9
    assert matmul_rate(spec, "float32", 1e3) == 20e9          # below the smallest: clamp
    assert matmul_rate(spec, "float32", 1e15) == 60e9         # above the largest: clamp
    mid = matmul_rate(spec, "float32", (f128 * f256) ** 0.5)  # half-way in log-FLOPs
    assert mid == pytest.approx(30e9)
    assert matmul_rate(spec, "bfloat16", f128) == 90e9        # measured peak, no curve
    assert matmul_rate(spec, "float16", f128) == 20e9         # unmeasured: runs as float32


def test_node_seconds_prices_a_node_on_the_measured_rates():
    from types import SimpleNamespace
    spec = spec_from_dict(_doc())

    def node(op_class, flops=0, nbytes=0, op="call_function", is_param=False):
        return SimpleNamespace(op=op, op_class=op_class, flops=flops, bytes_read=nbytes,
                               bytes_written=0, dtype="float32", is_param=is_param)
    f128 = 2 * 128 ** 3
    # A 128^3 matmul runs at the 128 size's 20 GFLOP/s, not the 60 GFLOP/s peak; plus overhead.
    assert node_seconds(node("matmul", f128, 3 * 128 * 128 * 4), spec) == pytest.approx(
        f128 / 20e9 + 4e-6)
    assert node_seconds(node("elementwise", 2500, 30_000), spec) == pytest.approx(3e-6 + 4e-6)
    assert node_seconds(node("view"), spec) == 1e-6
    assert node_seconds(node("creation"), spec) == 4e-6     # no FLOPs, no bytes: dispatch only
    assert node_seconds(node("param", op="placeholder", is_param=True), spec) == 0.0


def test_attention_and_random_draws_are_priced_on_their_own_rates():
    from types import SimpleNamespace
    doc = _doc()
    doc["compute"]["attention"] = {"float32": {"sizes": [{"flops": 1e6, "flops_per_s": 5e9},
                                                         {"flops": 1e8, "flops_per_s": 10e9}]}}
    doc["compute"]["random_elements_per_s"] = 1e8
    spec = spec_from_dict(doc)

    def node(op_class, flops=0, draws=0):
        return SimpleNamespace(op="call_function", op_class=op_class, flops=flops, bytes_read=0,
                               bytes_written=0, dtype="float32", is_param=False,
                               extra={"draws": draws} if draws else {})
    # At the curve's ends its rates, between them interpolated in log-FLOPs (1e7: halfway).
    assert node_seconds(node("attention", 1e6), spec) == pytest.approx(1e6 / 5e9 + 4e-6)
    assert node_seconds(node("attention", 1e7), spec) == pytest.approx(1e7 / 7.5e9 + 4e-6)
    # Each random draw costs 1 / random_rate on top of the roofline (dropout in attention too).
    assert node_seconds(node("random", 1000, draws=1000), spec) == pytest.approx(
        node_seconds(node("random", 1000), spec) + 1000 / 1e8)
    assert node_seconds(node("attention", 1e6, draws=4096), spec) == pytest.approx(
        1e6 / 5e9 + 4e-6 + 4096 / 1e8)
    # A spec without these rates (an older file, a preset) prices attention as a matmul.
    plain = spec_from_dict(_doc())
    assert plain.attention_curve == () and plain.random_rate == 0.0


def test_captured_nodes_count_their_random_draws():
    import graphopt

    class Drop(torch.nn.Module):
        def forward(self, q):
            a = torch.nn.functional.dropout(q, 0.1, training=True)
            b = torch.nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
            c = torch.nn.functional.scaled_dot_product_attention(q, q, q)
            return a + b + c
    q = torch.randn(2, 3, 8, 4)
    g = graphopt.capture(Drop(), (q,))
    draws = [(i.target, i.extra.get("draws", 0)) for i in g.nodes() if i.op == "call_function"]
    random = [d for t, d in draws if "dropout" in t or "bernoulli" in t]
    attention = sorted(d for t, d in draws if "attention" in t)
    assert random and max(random) == q.numel()
    assert attention == [0, 2 * 3 * 8 * 8]   # with dropout one draw per attention weight


def _write(tmp_path, doc_or_text):
    path = tmp_path / "device.json"
    path.write_text(doc_or_text if isinstance(doc_or_text, str) else json.dumps(doc_or_text))
    return path


def _broken(edit):
    doc = copy.deepcopy(_doc())
    edit(doc)
    return doc


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (_broken(lambda d: d.update(schema="graphopt.partition/1")), "schema"),
    (_broken(lambda d: d["memory"].pop("bandwidth_bytes_per_s")), "memory.bandwidth_bytes_per_s"),
    (_broken(lambda d: d["compute"]["matmul"].pop("float32")), "float32"),
    (_broken(lambda d: d["links"]["p2p"].update(beta_s_per_byte=-1.0)), "links.p2p.beta_s_per_byte"),
    (_broken(lambda d: d["links"]["allreduce"].update(world_size=1)), "world_size"),
    (_broken(lambda d: d["overhead"].update(op_seconds="fast")), "overhead.op_seconds"),
    (_broken(lambda d: d["compute"].update(vector_flops_per_s=float("nan"))), "vector_flops_per_s"),
    (_broken(lambda d: d.update(device_type="tpu")), "device_type"),
    (_broken(lambda d: d["compute"].update(attention={"float32": {"sizes": [{"flops": 1e6}]}})),
     "compute.attention.float32.sizes[0]"),
    (_broken(lambda d: d["compute"].update(attention=[1])), "compute.attention"),
    (_broken(lambda d: d["compute"].update(random_elements_per_s=0)), "random_elements_per_s"),
])
def test_malformed_files_are_one_line_errors(tmp_path, content, needle):
    path = _write(tmp_path, content)
    with pytest.raises(DeviceSpecError) as info:
        load_device_spec(path, device_type="cpu")
    msg = str(info.value)
    assert isinstance(info.value, GraphoptError) and needle in msg and "\n" not in msg
    assert str(path) in msg


def test_missing_file(tmp_path):
    with pytest.raises(DeviceSpecError, match="cannot read"):
        load_device_spec(tmp_path / "nope.json")


def test_another_device_type_is_refused(tmp_path):
    path = _write(tmp_path, _doc("cuda"))
    with pytest.raises(DeviceSpecError, match="measured on a cuda device but this run uses cpu"):
        load_device_spec(path, device_type="cpu")
    assert load_device_spec(path, device_type="cuda").device_type == "cuda"


def test_default_device_type_is_this_process(tmp_path):
    import torch
    other = "cpu" if torch.cuda.is_available() else "cuda"
    with pytest.raises(DeviceSpecError, match="measured on a"):
        load_device_spec(_write(tmp_path, _doc(other)))


def test_links_may_be_absent(tmp_path):
    doc = _doc()
    doc["links"] = {"p2p": None, "allreduce": None}     # calibrate --world 1
    spec = load_device_spec(_write(tmp_path, doc), device_type="cpu")
    assert spec.p2p_link is None and spec.allreduce_link is None


def test_save_refuses_an_invalid_document(tmp_path):
    with pytest.raises(DeviceSpecError):
        save_device_spec(_broken(lambda d: d.pop("overhead")), tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()
