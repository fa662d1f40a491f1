//! Authentication: verifying and issuing kite keys and tokens (RS256 JWTs).
