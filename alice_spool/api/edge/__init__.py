"""What every route passes through: keys and principals (`context`), errors, bodies and
waiting (`http`), the Host/Origin/Content-Type guard, security headers, the head's
deadline, rate limits and stream slots, and image URL fetch slots."""
