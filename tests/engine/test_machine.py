"""Decisions measured once per machine (actlab.engine.machine): every later
call and process reads the record; processes measuring at once wait for one."""

import json
import os
import subprocess
import sys
import textwrap

import torch

from actlab.engine.machine import RECORD, describe_cpu, machine_key, recorded


def test_describe_cpu_names_the_model_and_its_matrix_isa(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example CPU, 2.1GHz\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
                    "processor\t: 1\nmodel name\t: Example CPU, 2.1GHz\n")
    assert describe_cpu(info) == "Example CPU 2.1GHz (avx512_bf16 avx512f avx2)"  # no comma: a thread count follows


def test_a_decision_is_measured_once_per_machine_key(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTLAB_HOME", str(tmp_path))
    calls = []

    def measure():
        calls.append(1)
        return {"n": len(calls)}

    assert recorded("t", "x", measure) == {"n": 1} and recorded("t", "x", measure) == {"n": 1}
    assert recorded("t", "y", measure) == {"n": 2}
    record = json.loads((tmp_path / RECORD).read_text())
    assert record == {machine_key(): {"t": {"x": {"n": 1}, "y": {"n": 2}}}}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)  # another thread count is another key
        assert recorded("t", "x", measure) == {"n": 3}
    finally:
        torch.set_num_threads(threads)
    assert recorded("t", "x", measure) == {"n": 1} and len(json.loads((tmp_path / RECORD).read_text())) == 2


def test_an_unreadable_record_is_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTLAB_HOME", str(tmp_path))
    (tmp_path / RECORD).write_text('{"half a rec')
    assert recorded("t", "x", lambda: {"n": 1}) == {"n": 1}
    assert json.loads((tmp_path / RECORD).read_text())[machine_key()] == {"t": {"x": {"n": 1}}}


def test_an_unwritable_home_measures_in_each_call(monkeypatch, tmp_path):
    home = tmp_path / "a-file"
    home.write_text("")
    monkeypatch.setenv("ACTLAB_HOME", str(home))
    values = iter(range(10))
    assert recorded("t", "x", lambda: {"n": next(values)}) == {"n": 0}
    assert recorded("t", "x", lambda: {"n": next(values)}) == {"n": 1}


def test_processes_measuring_at_once_take_one_measurement(tmp_path):
    """Three processes start together; one measures (slowly), the others
    wait for its record and read it."""
    log = tmp_path / "measured.log"
    script = textwrap.dedent(f"""
        import json, os, time
        from actlab.engine.machine import recorded
        def measure():
            time.sleep(0.5)
            with open({str(log)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            return {{"pid": os.getpid()}}
        print(json.dumps(recorded("t", "x", measure)))
    """)
    env = {**os.environ, "ACTLAB_HOME": str(tmp_path / "home")}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    answers = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    measured = log.read_text().split()
    assert len(measured) == 1 and answers == [{"pid": int(measured[0])}] * 3
