"""`podnet`: admin CLI, agent and lab entry points."""
