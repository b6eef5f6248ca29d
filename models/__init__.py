"""The data: ORM tables, pydantic wire schemas and the derived fields of a stored trace."""
