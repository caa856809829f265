"""Device time per HLO op from profiler traces (``benchmarks/kernel_time.py``).

A GPU's kernel names are not the HLO's (``loop_add_fusion_3`` for ``loop_add_fusion.3``, cuBLAS
kernels for a ``dot``): the attribution uses the ``hlo_op`` statistics that XLA attaches to each
kernel. The GPU path is tested on a synthetic XSpace laid out as the CUDA profiler writes one;
the CPU path on a real trace.
"""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import hlo
from benchmarks import kernel_time

# One step of a GPU program "jit_step", 10 us of kernels: two fusions named as XLA:GPU names
# their kernels, a cuBLAS GEMM for "dot.2" (5 us, overlapping a fusion on another stream for
# 1 us), a kernel that only its name ties to "wrapped_convert.1", a fusion run inside a command
# buffer (its annotation names the buffer), a memcpy of no HLO op beside it, and a kernel of
# another module. The derived "XLA Ops" line repeats the fusions and must not count.
GPU_TRACE = """
planes {
  id: 1
  name: "/device:GPU:0"
  lines {
    id: 7 display_id: 7 name: "Stream #7(Compute)" timestamp_ns: 1000
    events { metadata_id: 1 offset_ps: 0 duration_ps: 2000000
      stats { metadata_id: 1 str_value: "loop_add_fusion.3" }
      stats { metadata_id: 2 ref_value: 10 } }
    events { metadata_id: 2 offset_ps: 2000000 duration_ps: 5000000
      stats { metadata_id: 1 str_value: "dot.2" } stats { metadata_id: 2 ref_value: 10 } }
    events { metadata_id: 3 offset_ps: 7000000 duration_ps: 1000000 }
    events { metadata_id: 4 offset_ps: 8000000 duration_ps: 1000000 }
    events { metadata_id: 5 offset_ps: 9000000 duration_ps: 1000000
      stats { metadata_id: 1 str_value: "fusion.9" } stats { metadata_id: 2 ref_value: 11 } }
  }
  lines {
    id: 8 display_id: 8 name: "Stream #8(Compute)" timestamp_ns: 1000
    events { metadata_id: 6 offset_ps: 6000000 duration_ps: 1000000
      stats { metadata_id: 1 str_value: "input_reduce_fusion" }
      stats { metadata_id: 2 ref_value: 10 } }
    events { metadata_id: 8 offset_ps: 8000000 duration_ps: 1000000
      stats { metadata_id: 1 str_value: "command_buffer.1" }
      stats { metadata_id: 2 ref_value: 10 } }
  }
  lines {
    id: 9 display_id: 9 name: "XLA Ops" timestamp_ns: 1000
    events { metadata_id: 7 offset_ps: 0 duration_ps: 2000000 }
  }
  event_metadata { key: 1 value { id: 1 name: "loop_add_fusion_3" } }
  event_metadata { key: 2 value { id: 2 name: "sm90_xmma_gemm_f32f32_tn_n" } }
  event_metadata { key: 3 value { id: 3 name: "wrapped_convert_1" } }
  event_metadata { key: 4 value { id: 4 name: "MemcpyD2D" } }
  event_metadata { key: 5 value { id: 5 name: "loop_fusion" } }
  event_metadata { key: 6 value { id: 6 name: "input_reduce_fusion" } }
  event_metadata { key: 7 value { id: 7 name: "loop_add_fusion.3" } }
  event_metadata { key: 8 value { id: 8 name: "loop_multiply_fusion_2" } }
  stat_metadata { key: 1 value { id: 1 name: "hlo_op" } }
  stat_metadata { key: 2 value { id: 2 name: "hlo_module" } }
  stat_metadata { key: 10 value { id: 10 name: "jit_step" } }
  stat_metadata { key: 11 value { id: 11 name: "jit_other" } }
}
planes {
  id: 2
  name: "/host:CPU"
  lines { id: 1 name: "python" timestamp_ns: 0
    events { metadata_id: 1 offset_ps: 0 duration_ps: 50000000 } }
  event_metadata { key: 1 value { id: 1 name: "PjitFunction(step)" } }
}
"""
INSTRUCTIONS = {
  "loop_add_fusion.3",
  "dot.2",
  "wrapped_convert.1",
  "input_reduce_fusion",
  "loop_multiply_fusion.2",
  "command_buffer.1",
  "p.1",
}


def test_gpu_trace_is_attributed_by_hlo_op_statistics():
  profile = jax.profiler.ProfileData.from_text_proto(GPU_TRACE)
  kind, events = kernel_time.device_events(profile)
  assert kind == "device"
  assert len(events) == 7  # the derived line and the host plane are left out
  report = kernel_time.attribute(events, steps=1, instructions=INSTRUCTIONS, module="jit_step")
  assert report["device_ms"] == pytest.approx(10e-3)
  # 0-7 us (with the 6-7 us overlap counted once), 7-8 us by name, 8-9 us in the command
  # buffer; not the other module's kernel at 9-10 us.
  assert report["attributed_ms"] == pytest.approx(9e-3)
  assert report["attributed_share"] == pytest.approx(0.9)
  ops = {row["op"]: row for row in report["ops"] if row["op"] is not None}
  assert set(ops) == {
    "loop_add_fusion.3",
    "dot.2",
    "wrapped_convert.1",
    "input_reduce_fusion",
    "loop_multiply_fusion.2",
  }
  assert ops["dot.2"]["ms"] == pytest.approx(5e-3)
  assert ops["dot.2"]["kernels"] == ["sm90_xmma_gemm_f32f32_tn_n"]
  unattributed = {row["kernels"][0] for row in report["ops"] if row["op"] is None}
  assert unattributed == {"MemcpyD2D", "loop_fusion"}
  assert report["ops"][0]["op"] == "dot.2"
  # Matching event names against the HLO, as before, finds one kernel of the six.
  assert sum(event.name in INSTRUCTIONS for event in events) == 1


def test_bandwidth_and_steps():
  profile = jax.profiler.ProfileData.from_text_proto(GPU_TRACE)
  _, events = kernel_time.device_events(profile)
  report = kernel_time.attribute(
    events, steps=2, instructions=INSTRUCTIONS, op_bytes={"loop_add_fusion.3": 4_000_000}
  )
  assert report["device_ms"] == pytest.approx(5e-3)
  ops = {row["op"]: row for row in report["ops"]}
  # Once per step: 2 x 4 MB in the 2 us the trace holds.
  assert ops["loop_add_fusion.3"]["gb_per_s"] == pytest.approx(4000.0)
  assert ops["loop_add_fusion.3"]["calls"] == 0.5
  text = kernel_time.format_report("synthetic", report)
  assert "loop_add_fusion.3" in text and "(unattributed)" in text


def test_union_of_intervals():
  assert kernel_time.union_ns([(0, 2), (1, 3), (5, 6)]) == 4
  assert kernel_time.union_ns([]) == 0


def test_cpu_trace_of_a_compiled_program():
  def fn(x, y):
    return jnp.tanh(x @ y) + 1.0

  x = jnp.ones((256, 256), jnp.float32)
  compiled = jax.jit(fn).lower(x, x).compile()
  text = compiled.as_text()

  def run():
    jax.block_until_ready(compiled(x, x))

  run()
  report = kernel_time.profile(run, 3, text)
  assert report["kind"] == "cpu"
  assert report["module"].startswith("jit_fn")
  assert report["attributed_share"] >= 0.9
  assert 0 < report["device_ms"] <= report["wall_ms"]
  ops = [row["op"] for row in report["ops"] if row["op"] is not None]
  assert ops and set(ops) <= hlo.instruction_names(compiled)
