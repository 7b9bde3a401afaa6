"""The inbox: request files dropped into a directory become jobs, each file exactly once,
even across crashes, bursts and files still being written.

How a file is found (`watcher`): a scan when the watcher starts, then watchdog's events
(inotify on Linux, or a polling observer for network filesystems), then a rescan every
`inbox.rescan_interval_s` for anything an event missed. Found files wait as `Pending`
until they are complete (`reading`, by the rules of `files`):

- renamed into the inbox, or closed after writing (inotify's close-write): at once;
- a `.json` file whose text is one whole JSON value: at once (no proper prefix of a JSON
  object is valid JSON);
- otherwise when its size and modification time have not changed for `inbox.settle_s`;
  a `.json` file that is not valid JSON waits ten times as long before it is rejected,
  in case its writer is only pausing.

How it is taken (`taking`): its jobs are committed with idempotency keys (the request's
`id`, else a hash of the file's name and content, and the line number in a `.jsonl`), and
only then is the file moved to `inbox/accepted/` (or deleted). A crash between the two
leaves the file in place; taking it again finds the same keys and adds nothing. A bad file
moves to `inbox/rejected/` with `NAME.error.json` beside it saying why.
"""

from .files import ACCEPTED, REJECTED, is_request_name
from .reading import Pending
from .taking import InboxStats
from .watcher import MOVE_PAIRING_S, Inbox

__all__ = [
    "ACCEPTED",
    "MOVE_PAIRING_S",
    "REJECTED",
    "Inbox",
    "InboxStats",
    "Pending",
    "is_request_name",
]
