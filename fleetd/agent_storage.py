"""An agent's storage beside its container: its disks (``fleetd.disks``: loop-backed, its --disk split between its
mounts) and its volumes. Blocking (mke2fs, losetup, engine calls): run it in the blocking-call pool."""

from __future__ import annotations

from pathlib import Path

from fleetd.agent_runtime import AgentRuntime
from fleetd.disks import Disks
from fleetd.models import AgentSpec
from fleetd.runtime import DISK_MOUNTS


class AgentStorage:
    def __init__(self, runtime: AgentRuntime, disks: Disks) -> None:
        self.runtime = runtime
        self.disks = disks

    def create_container(self, agent_id: str, spec: AgentSpec, env: dict[str, str]) -> str:
        """The agent's disks and its container, not started."""
        return self.runtime.create_agent(agent_id, spec, env, self._make_disks(agent_id, spec))

    def _make_disks(self, agent_id: str, spec: AgentSpec) -> dict[str, Path]:
        """Half of its --disk each."""
        assert spec.disk is not None
        share = spec.disk // len(DISK_MOUNTS) // 4096 * 4096  # whole ext4 blocks
        return {which: self.disks.create(agent_id, which, share) for which in DISK_MOUNTS}

    def remove(self, agent_id: str) -> None:
        """The agent's volumes and disks, once its container is gone."""
        self.runtime.remove_volumes(agent_id)
        self.disks.remove(agent_id)

    def discard(self, agent_id: str) -> None:
        """What a spawn that failed made: its container, namespace holder, volumes and disks."""
        self.runtime.remove(self.runtime.agent_name(agent_id))
        self.runtime.remove_netns(agent_id)
        self.remove(agent_id)

    def attach(self, agent_id: str) -> None:
        """Before a restart: the disks' loop devices are gone after a host reboot."""
        for which in self.disks.exists(agent_id):
            self.disks.attach(agent_id, which)

    def agents(self) -> set[str]:
        """The agents that have disks."""
        return self.disks.agents()

    def remove_all(self) -> int:
        return self.disks.remove_all()
