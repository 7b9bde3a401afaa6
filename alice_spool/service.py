"""systemd: the `alice.service` unit (rendered for an install prefix), and the
`sd_notify` protocol (READY, and the watchdog ping) spoken without a library."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

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

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class UnitOptions:
    prefix: str = "/opt/alice/venv"  # the virtual environment alice-spool is installed in
    user: str = "alice"
    config: str = "/etc/alice/config.toml"
    state_dir: str = "/var/lib/alice"


def render_unit(options: UnitOptions = UnitOptions()) -> str:
    return UNIT_TEMPLATE.format(
        prefix=options.prefix.rstrip("/"),
        user=options.user,
        config=options.config,
        state_dir=options.state_dir.rstrip("/"),
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
