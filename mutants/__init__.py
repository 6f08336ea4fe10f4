"""Mutation testing: apply method-breaking edits one at a time and check that the test suite notices (issue 21)."""
