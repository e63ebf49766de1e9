"""Age public keys (`age1...`, X25519) as the settings and the inventory accept them.

A key is Bech32 (BIP 173) with the human-readable part `age` and 32 bytes of data: 58
characters after `age1`, the last six a checksum. The checksum is checked here, so a key with
a mistyped character is refused when the settings or the inventory are read, not by `age` in
the middle of a backup. Plugin recipients (`age1yubikey1...`) and SSH keys are not accepted:
a backup host writes with plain X25519 keys only, and needs no plug-in to do so.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
#: `age1`, then 52 characters of the key's 32 bytes and 6 of checksum.
_SHAPE = re.compile(r"age1[" + _CHARSET + r"]{58}")
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_GENERATOR):
            if top >> bit & 1:
                check ^= generator
    return check


def check_recipient(key: str) -> str:
    """`key` as it is, if it is an age X25519 public key; `ValueError` naming what is wrong."""
    if key.startswith("AGE-SECRET-KEY-"):
        # Not echoed: it is a private key, pasted where the public one belongs.
        raise ValueError("that is an age private key (AGE-SECRET-KEY-...); give its public key")
    if not _SHAPE.fullmatch(key):
        raise ValueError(
            f"{key[:80]!r} is not an age public key (`age1` and 58 lowercase Bech32 characters,"
            " as `age-keygen -y` prints)"
        )
    hrp, data = "age", [_CHARSET.index(c) for c in key[4:]]
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    if _polymod(expanded + data) != 1:
        raise ValueError(f"{key!r} is not an age public key: its checksum does not match")
    return key


#: An age X25519 public key, checked (`check_recipient`).
AgeRecipient = Annotated[str, AfterValidator(check_recipient)]
