"""Errors with the SAFE launcher's error codes: the one table of codes and descriptions.

Every domain error the gateway can report is a :class:`SafeError` carrying the launcher's
negative ``code`` and its ``description`` string; the HTTP layer turns it into
``{"errorCode": code, "description": description}`` and applies the launcher's rule that a
description naming a missing thing is a 404, anything else a 400.
"""

from __future__ import annotations

# code -> description, as the launcher (safe_core 0.22.x, error_code_lookup.js) printed them.
DESCRIPTIONS: dict[int, str] = {
    -1: "CoreError::StructuredDataHeaderSizeProhibitive",
    -2: "CoreError::UnsuccessfulEncodeDecode",
    -3: "CoreError::AsymmetricDecipherFailure",
    -4: "CoreError::SymmetricDecipherFailure",
    -5: "CoreError::ReceivedUnexpectedData",
    -9: "CoreError::OperationForbiddenForClient",
    -10: "CoreError::Unexpected",
    -17: "CoreError::GetFailure::GetError::NoSuchAccount",
    -18: "CoreError::GetFailure::GetError::NoSuchData",
    -19: "CoreError::GetFailure::GetError::NetworkOther",
    -22: "CoreError::MutationFailure::MutationError::NoSuchData",
    -23: "CoreError::MutationFailure::MutationError::DataExists",
    -24: "CoreError::MutationFailure::MutationError::LowBalance",
    -25: "CoreError::MutationFailure::MutationError::InvalidSuccessor",
    -26: "CoreError::MutationFailure::MutationError::InvalidOperation",
    -27: "CoreError::MutationFailure::MutationError::NetworkOther",
    -28: "CoreError::MutationFailure::MutationError::NetworkFull",
    -29: "CoreError::MutationFailure::MutationError::DataTooLarge",
    -35: "CoreError::RequestTimeout",
    -1502: "FfiError::PathNotFound",
    -1503: "FfiError::InvalidPath",
    -1504: "FfiError::PermissionDenied",
    -1510: "FfiError::Unexpected",
    -1511: "FfiError::UnsuccessfulEncodeDecode",
    -1513: "FfiError::InvalidStructDataHandle",
    -1514: "FfiError::InvalidDataIdHandle",
    -1515: "FfiError::InvalidAppendableDataHandle",
    -1516: "FfiError::InvalidSelfEncryptorHandle",
    -1517: "FfiError::InvalidCipherOptHandle",
    -1518: "FfiError::InvalidEncryptKeyHandle",
    -1519: "FfiError::InvalidSignKeyHandle",
    -1520: "FfiError::OperationForbiddenForApp",
    -1521: "FfiError::InvalidStructuredDataTypeTag",
    -1522: "FfiError::InvalidVersionNumber",
    -1523: "FfiError::InvalidSelfEncryptorReadOffsets",
    -1524: "FfiError::InvalidIndex",
    -1525: "FfiError::UnsupportedOperation",
}

# Named codes used across the code base.
HEADER_SIZE_PROHIBITIVE = -1
ENCODE_DECODE = -2
ASYMMETRIC_DECIPHER = -3
SYMMETRIC_DECIPHER = -4
UNEXPECTED = -10
NO_SUCH_DATA = -18
MUTATION_NO_SUCH_DATA = -22
DATA_EXISTS = -23
INVALID_SUCCESSOR = -25
INVALID_OPERATION = -26
NETWORK_OTHER = -27
DATA_TOO_LARGE = -29
PERMISSION_DENIED = -1504
INVALID_SD_HANDLE = -1513
INVALID_DATA_ID_HANDLE = -1514
INVALID_AD_HANDLE = -1515
INVALID_SE_HANDLE = -1516
INVALID_CIPHER_OPT_HANDLE = -1517
INVALID_ENCRYPT_KEY_HANDLE = -1518
INVALID_SIGN_KEY_HANDLE = -1519
FORBIDDEN_FOR_APP = -1520
INVALID_TYPE_TAG = -1521
INVALID_VERSION_NUMBER = -1522
INVALID_READ_OFFSETS = -1523
INVALID_INDEX = -1524
UNSUPPORTED_OPERATION = -1525

_NOT_FOUND_WORDS = ("notfound", "pathnotfound", "nosuchdata", "invalidpath")


class SafeError(Exception):
    """A failure with a launcher error code (negative) and description."""

    def __init__(self, code: int, detail: str | None = None) -> None:
        self.code = code
        self.description = DESCRIPTIONS.get(code, "CoreError::Unexpected")
        self.detail = detail
        super().__init__(f"{self.description} ({code})" + (f": {detail}" if detail else ""))

    @property
    def http_status(self) -> int:
        """The launcher's 400-vs-404 rule."""
        lowered = self.description.lower().replace("::", "")
        return 404 if any(w in lowered for w in _NOT_FOUND_WORDS) else 400

    def to_json(self) -> dict[str, object]:
        return {"errorCode": self.code, "description": self.description}


class GatewayError(Exception):
    """The gateway refused a request (or could not be reached): raised by
    :mod:`safefs.client`, defined here so that code handling it need not import the client."""

    def __init__(self, status: int, code: int, description: str) -> None:
        super().__init__(f"{description} (HTTP {status}, code {code})")
        self.status = status
        self.code = code
        self.description = description
