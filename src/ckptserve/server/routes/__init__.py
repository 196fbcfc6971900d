"""The routes: the original API under the prefix (`rl`), OIP v2 (`oip`), operations (`ops`)."""
