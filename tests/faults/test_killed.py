"""borg-vm SIGKILLed at each phase of a backup, alone and with QEMU (a host that
lost power): nothing to say, nothing lost; the next run removes what it left and
goes on from the last good archive. Each phase in a Borg 1.4 repository (a
chain) and a Borg 2 one (complete images: killed at STREAMING, say, its images
are made and its record is not)."""

import pytest

from borg_vm import runtime

PHASES = [runtime.PLANNED, runtime.JOB_STARTED, runtime.STREAMING, runtime.ENDING,
          runtime.BORG_FINISHED, runtime.DONE]


@pytest.mark.parametrize("generation", ["borg1", "borg2"], indirect=True)
@pytest.mark.parametrize("phase", PHASES)
def test_borg_vm_killed_at_phase(target, record, phase, generation):
    t = target()
    record["injected"] = f"SIGKILL of borg-vm at phase {phase}"
    t.kill(t.start(stop_at=phase))
    t.next_run()
    t.check()


def test_host_crash_mid_stream(target, record):
    """borg-vm and QEMU killed at once: the checkpoints went with QEMU, so a full."""
    t = target()
    proc = t.start(stop_at=runtime.STREAMING)
    record["injected"] = "SIGKILL of borg-vm and of QEMU mid-stream (a host crash)"
    t.d.kill_qemu()
    t.kill(proc)
    t.d.start_paused()
    t.next_run("full", "inconsistent", code=1)   # it planned an incremental
    t.check()
