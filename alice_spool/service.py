"""systemd: the `alice.service` unit (rendered for an install prefix), and the
`sd_notify` protocol (READY, and the watchdog ping) spoken without a library."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

_HARDENING = """\
# Hardening. Not here on purpose: PrivateDevices= (it hides the GPU) and
# MemoryDenyWriteExecute= (PyTorch and CUDA generate code at run time).
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={state_dir}
ProtectHome=yes
PrivateTmp=yes
UMask=0027
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
AmbientCapabilities=
# The GPU, and nothing else of /dev: the NVIDIA device groups of /proc/devices.
DevicePolicy=closed
DeviceAllow=char-nvidia-frontend rw
DeviceAllow=char-nvidia-uvm rw
DeviceAllow=char-nvidia-caps rw
DeviceAllow=char-nvidiactl rw
"""

UNIT_TEMPLATE = """\
# alice-spool as a systemd service: the HTTP API, the inbox watcher and the GPU runner,
# run by `alice-spool serve` as the unprivileged user {user}, with its state in
# {state_dir}. Rendered by `alice-spool install-service --print`; see README.md, "Install
# as a service".

[Unit]
Description=alice-spool: durable Stable Diffusion job spool
Documentation=https://github.com/alice-spool/alice-spool
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
# serve says READY once it listens, and pings the watchdog while its runner reports.
NotifyAccess=main
WatchdogSec=120
User={user}
Group={user}
Environment=ALICE_CONFIG={config}
Environment=ALICE_PATHS_DATA_DIR={state_dir}
WorkingDirectory={state_dir}
ExecStart={prefix}/bin/alice-spool serve
Restart=on-failure
RestartSec=5
# Stop: SIGTERM to serve alone (mixed), which passes one SIGTERM to its runner; the runner
# interrupts its batch and puts its jobs back in the queue, attempts uncounted. Whatever is
# left after TimeoutStopSec is SIGKILLed, the whole control group.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=90

{hardening}
[Install]
WantedBy=multi-user.target
"""


RUNNER_UNIT_TEMPLATE = """\
# alice-spool's runner alone, for a host that only runs jobs (README.md, "Scaling out"):
# a template, one instance per GPU, the instance being the GPU's index:
#   systemctl enable --now alice-runner@0 alice-runner@1
# Its config ({config}) names the shared PostgreSQL (paths.database_url)
# and the data_dir, outbox and models on shared storage, the same paths on every node.
# Rendered by `alice-spool install-service --print --runner`.

[Unit]
Description=alice-spool runner on GPU %i
Documentation=https://github.com/alice-spool/alice-spool
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={user}
Group={user}
Environment=ALICE_CONFIG={config}
Environment=ALICE_PATHS_DATA_DIR={state_dir}
WorkingDirectory={state_dir}
# Its name in job leases: this host's name and the GPU's index (unique on every host).
ExecStart={prefix}/bin/alice-spool runner --device cuda:%i --name %H-gpu%i
# A crash, or exit 70 when its GPU stopped answering: started again.
Restart=always
RestartSec=5
# Stop: SIGTERM; the runner interrupts its batch and puts its jobs back in the queue,
# attempts uncounted. Whatever is left after TimeoutStopSec is SIGKILLed.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=90

{hardening}
[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class UnitOptions:
    prefix: str = "/opt/alice/venv"  # the virtual environment alice-spool is installed in
    user: str = "alice"
    config: str = "/etc/alice/config.toml"
    state_dir: str = "/var/lib/alice"


def render_unit(options: UnitOptions = UnitOptions(), *, runner: bool = False) -> str:
    """`alice.service` (serve), or with `runner` the template `alice-runner@.service`."""
    state_dir = options.state_dir.rstrip("/")
    return (RUNNER_UNIT_TEMPLATE if runner else UNIT_TEMPLATE).format(
        prefix=options.prefix.rstrip("/"),
        user=options.user,
        config=options.config,
        state_dir=state_dir,
        hardening=_HARDENING.format(state_dir=state_dir),
    )


def sd_notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1", "WATCHDOG=1") to systemd; False when not run by
    systemd with a notify socket."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """systemd's watchdog interval for this process (WatchdogSec=), if it asked for pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000
    except ValueError:
        return None
