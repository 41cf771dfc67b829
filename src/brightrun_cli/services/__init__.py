"""Operations. Services take a Workspace, return objects, raise BrightrunError; never print."""
