"""Where a run's SGLang servers listen and which seed each one uses: one rule for the engines
launcher (``opd run`` starts them) and the Slurm placement (the sbatch job starts them), so
both put the same server on the same port with the same seed.

Ports, consecutive from ``engines.base_port``: the student servers, one port kept for the
student router (used only with ``engines.router`` and more than one student server), the
teacher servers, the learner's MASTER_PORT (Slurm jobs), then the distributed weight-sync
group's rendezvous. Seeds: student server i gets ``run.seed + i``, teacher server i
``run.seed + 1000 + i``.

Pure functions of the settings (no sockets, nothing started); they live next to the schema
because ``engines/`` and ``plan/`` both read them and neither may import the other.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

from opd_megatron.config.schema import EnginesConfig

TEACHER_SEED_OFFSET = 1000
"""Teacher servers' seeds start at run.seed + 1000, away from the student servers'."""


def role_ports(first_port: int, num_servers: int, router: bool = False) -> Tuple[List[int], Optional[int]]:
    """One role's ports: its servers on consecutive ports from ``first_port``, then (when
    ``router``) the router on the next one."""
    return list(range(first_port, first_port + num_servers)), (first_port + num_servers if router else None)


class ServerPorts(NamedTuple):
    student: Tuple[int, ...]
    router: Optional[int]
    """The student router's port; None unless engines.router and more than one student server."""
    teacher: Tuple[int, ...]
    """Empty when no teacher servers run."""
    next_free: int
    """The first port after all of them (a Slurm job's learner MASTER_PORT)."""

    @property
    def weight_sync(self) -> int:
        """The port after MASTER_PORT: rank 0's rendezvous of the distributed weight-sync group."""
        return self.next_free + 1


def server_ports(engines: EnginesConfig, teacher_servers: bool = True) -> ServerPorts:
    """Every server's port (see the module doc); ``teacher_servers=False``: none for the teacher."""
    student, router_slot = role_ports(engines.base_port, engines.student.num_servers, router=True)
    router = router_slot if engines.router and len(student) > 1 else None
    num_teacher = engines.teacher.num_servers if teacher_servers else 0
    teacher, _ = role_ports(router_slot + 1, num_teacher)
    return ServerPorts(tuple(student), router, tuple(teacher), router_slot + 1 + num_teacher)


def role_seed(run_seed: int, role: str) -> int:
    """Seed of a role's server 0; server i gets ``role_seed + i`` (``server_seed``)."""
    return run_seed + (TEACHER_SEED_OFFSET if role == "teacher" else 0)


def server_seed(run_seed: int, role: str, index: int) -> int:
    """Seed of server ``index`` of ``role`` ('student' or 'teacher')."""
    return role_seed(run_seed, role) + index
