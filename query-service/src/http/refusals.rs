//! What each query-service operation may be refused with, for its OpenAPI document.

use service_kit::ErrorCode;
use service_kit::refusals;
use service_kit::refusals::{INVALID_REQUEST, Refusal, SERVICE_UNAVAILABLE, UNAUTHORIZED};

const FORBIDDEN_TO_READ: Refusal = Refusal::new(
    403,
    "forbidden: the token lacks accounts:read.",
    &[ErrorCode::Forbidden],
);
const FORBIDDEN_TO_ADMINISTER: Refusal = Refusal::new(
    403,
    "forbidden: the token lacks accounts:admin.",
    &[ErrorCode::Forbidden],
);
const NOT_FOUND: Refusal = Refusal::new(
    404,
    "not_found: no account has this id, it is not the caller's, or it is not projected yet.",
    &[ErrorCode::NotFound],
);
const TRANSFER_NOT_FOUND: Refusal = Refusal::new(
    404,
    "not_found: no transfer has this id, neither its source nor its destination is the caller's, or it is not projected yet (by the end of `wait_ms`).",
    &[ErrorCode::NotFound],
);
const NOT_YET_PROJECTED: Refusal = Refusal::new(
    504,
    "not_yet_projected: the projection did not reach `min_version` within `wait_ms`.",
    &[ErrorCode::NotYetProjected],
);

refusals!(pub(super) AccountRefusals = [
    INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN_TO_READ, NOT_FOUND, SERVICE_UNAVAILABLE,
    NOT_YET_PROJECTED,
]);
refusals!(pub(super) ListRefusals = [
    INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN_TO_READ, SERVICE_UNAVAILABLE,
]);
refusals!(pub(super) OperationsRefusals = [
    INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN_TO_READ, NOT_FOUND, SERVICE_UNAVAILABLE,
]);
refusals!(pub(super) BalanceSheetRefusals = [
    UNAUTHORIZED, FORBIDDEN_TO_ADMINISTER, SERVICE_UNAVAILABLE,
]);
refusals!(pub(super) TransferRefusals = [
    INVALID_REQUEST, UNAUTHORIZED, FORBIDDEN_TO_READ, TRANSFER_NOT_FOUND, SERVICE_UNAVAILABLE,
]);
