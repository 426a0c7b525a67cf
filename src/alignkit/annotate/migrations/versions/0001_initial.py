"""The first schema: users, projects, pairwise items, assignments, judgments.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("password_hash", sa.String(300)),
        sa.Column("token_hash", sa.String(64), unique=True),
        sa.Column("created_at", STAMP, nullable=False),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("guidelines", sa.Text, nullable=False),
        sa.Column("annotators_per_item", sa.Integer, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False, index=True),
        sa.Column("prompt", sa.JSON, nullable=False),
        sa.Column("response_a", sa.Text, nullable=False),
        sa.Column("response_b", sa.Text, nullable=False),
        sa.Column("model_a", sa.String(300)),
        sa.Column("model_b", sa.String(300)),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("taken", sa.Integer, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
    )
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False, index=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False, index=True),
        sa.Column("swapped", sa.Boolean, nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
        sa.UniqueConstraint("item_id", "user_id"),
    )
    op.create_table(
        "judgments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("assignment_id", sa.Integer, sa.ForeignKey("assignments.id"), nullable=False, unique=True),
        sa.Column("item_id", sa.Integer, sa.ForeignKey("items.id"), nullable=False, index=True),
        sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False, index=True),
        sa.Column("choice", sa.String(20), nullable=False),
        sa.Column("strength", sa.Integer),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("time_spent_ms", sa.Integer),
        sa.Column("created_at", STAMP, nullable=False),
    )


def downgrade() -> None:
    for table in ("judgments", "assignments", "items", "projects", "users"):
        op.drop_table(table)
