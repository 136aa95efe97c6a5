"""SQLAlchemy 2 (psycopg 3 driver) through the PostgreSQL door: its connection pool over the
door's, Core and ORM sessions, commit and rollback, and threads sharing the engine.

usage: pg_sqlalchemy.py DSN   (a postgresql:// URL)
"""

import faulthandler
import sys
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import ForeignKey, String, create_engine, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

url = sys.argv[1].replace("postgresql://", "postgresql+psycopg://", 1)
# A hang shows where it is stuck (the test stops waiting at 120 s).
faulthandler.dump_traceback_later(90, exit=True)
engine = create_engine(url, pool_size=8, max_overflow=0)


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list["Book"]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


Base.metadata.create_all(engine)

with Session(engine) as session:
    for i in range(10):
        session.add(Author(name=f"author {i}", books=[Book(title=f"book {i}.{j}") for j in range(3)]))
    session.commit()

with Session(engine) as session:
    session.add(Author(name="never"))
    session.flush()
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Author)) == 10


def reader(n):
    with Session(engine) as session:
        for _ in range(10):
            author = session.scalars(select(Author).where(Author.name == f"author {n % 10}")).one()
            assert sorted(b.title for b in author.books) == [f"book {n % 10}.{j}" for j in range(3)]
            session.rollback()
    with engine.begin() as conn:
        conn.execute(text("UPDATE authors SET name = name WHERE id = :id"), {"id": n % 10 + 1})
    return n


with ThreadPoolExecutor(8) as pool:
    assert sorted(pool.map(reader, range(16))) == list(range(16))

with engine.connect() as conn:
    assert conn.execute(text("SELECT count(*) FROM books")).scalar() == 30
engine.dispose()
print("ok")
