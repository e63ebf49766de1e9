"""Schemathesis' CLI against the shim's /openapi.json on the real stack, every phase (examples,
coverage, fuzzing and the stateful one, which follows links such as a job id from an enqueue
to the job) and every check: no 5xx, answers as documented (status codes, content types,
schemas, headers), schema-valid requests accepted and invalid ones refused, 405s with their
`Allow`, and a request without its token refused.
"""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

from deployments.system.stack import Stack
from tasks.core.callers import mint_token

EXAMPLES_PER_OPERATION = 25


def test_api_honours_its_openapi_document(stack: Stack, tmp_path: Path) -> None:
    assert stack.shim_url and stack.jwt_secret, "the stack did not start the API shim"
    # A user, not an admin: random pause or clean requests must not disturb other tests.
    token = mint_token(stack.jwt_secret, f"fuzz-{uuid.uuid4().hex[:6]}")
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "run",
            f"{stack.shim_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES_PER_OPERATION),
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ],
        cwd=tmp_path,  # its report directory, if any
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    tested = re.search(r"Tested: (\d+)", output)
    assert tested and int(tested.group(1)) >= 22, output  # /api/backups/... among them
    for phase in ("Coverage", "Fuzzing", "Stateful"):  # ran and passed, not skipped
        assert f"✅ {phase}" in output, output
