"""The recalign code location: Definitions, jobs, schedules and resources."""
