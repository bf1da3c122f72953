"""Infrastructure: watched workers, the watchdog, atomic outputs, argument validation, user
imports."""
