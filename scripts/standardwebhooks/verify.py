"""Verify captured deliveries with the Standard Webhooks reference library.

Headers are handed over as a receiver's HTTP server would: raw bytes
decoded as Latin-1 (what WSGI/ASGI servers do), so a header that is not
ASCII reaches the library garbled, as it would in production.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    secret_file, messages_file = sys.argv[1], sys.argv[2]
    with open(secret_file, encoding="utf-8") as f:
        secret = f.readline().strip()
    with open(messages_file, encoding="utf-8") as f:
        messages = json.load(f)
    hook = Webhook(secret)
    failed = 0
    for m in messages:
        headers = {
            name: bytes.fromhex(value).decode("latin-1")
            for name, value in m["headers_hex"].items()
        }
        body = bytes.fromhex(m["body_hex"])
        try:
            hook.verify(body, headers)
            print(f"ok {headers.get('webhook-id')}")
        except Exception as e:  # the library raises WebhookVerificationError
            failed += 1
            print(f"FAILED {headers.get('webhook-id')!r}: {e}")
    return 1 if failed or not messages else 0


if __name__ == "__main__":
    sys.exit(main())
