"""Publish a message to an rrr room from Python, straight to the Redis rrr runs on (no HTTP, no
server key): stored in the room's history, so a page that was reconnecting recovers it.

    pip install '/path/to/rrr'       # the library alone: no Tornado, no embedded Redis
    RRR_REDIS_URL=redis://127.0.0.1:6379/0 python publish.py hello '{"text": "hi"}' [event]
"""

from __future__ import annotations

import json
import os
import sys

from rrr.client import BackplaneError, OutcomeUnknown, publish


def main(argv: list[str]) -> int:
    room, data = argv[1], json.loads(argv[2])
    event = argv[3] if len(argv) > 3 else None
    try:
        offset = publish(room, data, event=event, redis_url=os.environ["RRR_REDIS_URL"])
    except ValueError as e:  # a bad room or event name, or data over the servers' --max-message-size
        print(f"refused: {e}", file=sys.stderr)
        return 1
    except OutcomeUnknown:  # Redis took the call but did not answer: it may have been published
        print("outcome unknown: do not retry blindly", file=sys.stderr)
        return 2
    except BackplaneError as e:  # Redis refused or could not be reached: nothing was published
        print(f"not published: {e}", file=sys.stderr)
        return 1
    print(f"published to {room}: offset {offset}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
