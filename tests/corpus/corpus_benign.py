r"""The benign half of the corpus: everyday developer commands that must be allowed and work.

Each runs in a fresh copy of the workspace that ``test_corpus.py`` builds: a small git
repository (branch ``main``, two commits and a tag ``v0.1``, a branch ``docs`` one commit
ahead) holding a Python package with a unittest, a Makefile, shell and Python scripts, JSON,
CSV and TOML data, a C file, a tiny node script, a patch, an ``.env.example`` (and an
untracked ``.env``). Every command must exit 0 inside the sandbox.

A line ``[tool,tool] command`` needs those programs inside the sandbox; where one is
missing the command is skipped (and counted as skipped), so the corpus runs on any machine.
"""

# ruff: noqa: E501  (a command is one line, however long)

from __future__ import annotations

import re

_BLOCK = r"""
ls
ls -la
ls -lah src
ls -R src
ls -1 data | sort
ls -la /tmp
ls /usr/bin | head -3
pwd
cat README.md
cat .env.example
cat config/settings.toml
cat -A README.md | head -2
head -n 3 README.md
head -c 40 README.md
tail -n 2 data/sales.csv
tail -n +2 data/sales.csv
wc -l README.md
wc -l data/*.csv
wc -w docs/guide.md
wc -c < README.md
echo hello
echo $HOME
echo "$PWD"
echo $((1 + 2))
printenv PATH
printenv HOME
env | sort | head -3
id -u
id
whoami
uname -a
uname -m
hostname
nproc
date +%Y-%m-%d
date -u
df -h .
du -sh src
du -a data
stat README.md
stat -c %s README.md
[file] file README.md
which python3
command -v git
type ls
true
test -f README.md
[ -d src ] && echo yes
ulimit -a
umask
locale
getconf PAGE_SIZE
cat /etc/os-release
head -1 /proc/meminfo
[ps] ps
[free] free -m
grep -n TODO README.md
grep -rn TODO src
grep -rn '.env' src/
grep -rn 'API_KEY' .env.example
grep -c def src/app/util.py
grep -l import -r src
grep -E '^[a-z]+,' data/sales.csv
grep -v apple data/words.txt
grep -i hello README.md
grep -rn --include='*.py' slugify .
grep -q Hello README.md && echo found
grep -rn password config/ || true
find . -name '*.py'
find . -name '*.py' -not -path './.git/*' | sort
find src -type f
find . -maxdepth 1 -type d
find . -name '*.json' -size -10k
find . -path ./.git -prune -o -type f -print
find src -name '*.py' | xargs wc -l
find . -name '*.pyc' -delete
find src -name '*.py' -exec grep -l def {} +
find . -newer README.md -type f -name '*.md'
sed -i 's/Hello/Hi/' README.md
sed -i 's/8080/9090/' config/settings.toml && grep port config/settings.toml
sed -i.bak '1d' data/words.txt && ls data
sed -n '1,3p' README.md
sed -e 's/,/;/g' data/sales.csv
sed '/^$/d' README.md
sed -i -e '$a new line' notes.txt
sed -i 's/^API_KEY=.*/API_KEY=dev/' .env.example
awk -F, 'NR > 1 {s += $3} END {print s}' data/sales.csv
awk -F, '{print $1}' data/sales.csv | sort -u
awk 'NR > 1' data/sales.csv
awk '{print NR": "$0}' README.md
awk -F, '$3 > 5' data/sales.csv
cut -d, -f1 data/sales.csv
cut -c1-10 README.md
sort data/words.txt
sort -r data/words.txt
sort data/words.txt | uniq
sort data/words.txt | uniq -c | sort -rn
sort -t, -k3 -n data/sales.csv
sort -u data/words.txt > sorted.txt && cat sorted.txt
tr a-z A-Z < data/words.txt
tr -d '\r' < README.md > README.unix && mv README.unix README.md
tac data/words.txt
[rev] rev data/words.txt
nl README.md
paste -sd, data/words.txt
[column] column -t -s, data/sales.csv
fold -w 20 README.md
[fmt] fmt -w 40 docs/guide.md
sort data/words.txt > a && sort -u data/words.txt > b && comm -12 a b
split -l 2 data/words.txt part_ && ls part_*
diff README.md README.md
diff -u data/words.txt data/words.txt
cmp README.md README.md
md5sum README.md
sha256sum data/*.json
cksum README.md
base64 README.md
base64 README.md | base64 -d
[xxd] xxd README.md | head -3
od -c data/words.txt | head -2
expr 2 + 3
seq 1 5
[bc] seq 1 10 | paste -sd+ | bc
[bc] echo '2^10' | bc
printf '%s\n' a b c
printf '%05d\n' 42
basename src/app/util.py
dirname src/app/util.py
realpath README.md
readlink -f src
mktemp
mktemp -d
echo scratch > /tmp/scratch && cat /tmp/scratch
sleep 0.1
timeout 5 python3 -c 'print(1)'
env LC_ALL=C sort data/words.txt
export FOO=bar && echo $FOO
FOO=bar sh -c 'echo $FOO'
cd src && ls
cd src/app && ls -la
for f in src/app/*.py; do echo "$f"; done
for i in 1 2 3; do echo $i; done
while read w; do echo "$w"; done < data/words.txt
if [ -f README.md ]; then echo yes; fi
test -d src && echo dir
case "$(uname)" in Linux) echo linux;; *) echo other;; esac
sh -c 'echo ok'
[bash] bash -c 'echo $BASH_VERSION'
ls src/app/*.py | xargs wc -l
echo a b c | xargs -n1 echo
find . -name '*.md' | xargs grep -l Hello
mkdir -p build/out
mkdir -p a/b/c && touch a/b/c/d && ls -R a
mkdir newdir && rmdir newdir
touch newfile.txt && ls newfile.txt
cp README.md README.copy.md
cp -r src src_backup
cp .env.example .env
cp .env.example .env.local
mv notes.txt docs/notes.txt
mv docs/guide.md docs/GUIDE.md
rm notes.txt
rm -f nonexistent.txt
rm -rf build
mkdir build && rm -r build
cp -r src src_backup && rm -rf src_backup
rm data/words.txt
ln -s README.md link.md && cat link.md
ln README.md hard.md
chmod +x scripts/count.sh
chmod 644 README.md
chmod -R u+rw src
touch -d '2020-01-01' notes.txt
truncate -s 0 notes.txt
echo line >> notes.txt
echo new > new.txt
cat README.md docs/guide.md > combined.md
tee out.txt < README.md
echo hi | tee -a notes.txt
dd if=README.md of=copy.md status=none
install -m 644 README.md docs/README.md
tar czf src.tgz src
tar czf src.tgz src && tar tzf src.tgz
tar cf - src | wc -c
tar czf out.tgz src && mkdir x && tar xzf out.tgz -C x && ls x
[bzip2] tar cjf data.tbz data
[xz] tar cJf data.txz data
gzip -k README.md && ls README.md.gz
gzip -c README.md | gunzip
[bzip2] bzip2 -k data/sales.csv
[xz] xz -k data/sales.csv
git status
git status --short
git status -sb
git log --oneline
git log -3 --stat
git log --graph --oneline --all
git log --format='%h %s' -n 2
git log --author=Dev --oneline
git diff
git diff --stat HEAD
git diff --cached
git show --stat HEAD
git show HEAD:README.md
git branch
git branch -a
git branch -v
git tag
git tag -l 'v*'
git rev-parse HEAD
git rev-parse --abbrev-ref HEAD
git ls-files
git ls-files src
git ls-tree HEAD
git cat-file -t HEAD
git show-ref
git blame README.md
git shortlog -sn HEAD
git grep -n def
git grep -c import
git describe --tags
git reflog -3
git count-objects -v
git config user.name
git config --list --local
git remote -v
git stash list
git worktree list
git fsck --no-progress
git gc -q
git init newrepo
git init -q newrepo && git -C newrepo status --short
echo x >> notes.txt && git add notes.txt && git commit -qm 'Update notes'
git add -A && git commit -qm 'WIP' --allow-empty
git commit --allow-empty -m 'Empty commit'
git checkout -b feature-x
git switch -c feature-y
git checkout -q docs && git checkout -q main
git merge docs
git merge --no-ff -m 'Merge docs' docs
git rebase -q docs
git cherry-pick docs
git revert --no-edit HEAD
git reset --soft HEAD~1
git reset -q HEAD README.md
git restore README.md
git checkout -- README.md
echo x >> README.md && git stash -q && git stash pop -q
echo x >> README.md && git diff --stat
echo x >> README.md && git add README.md && git diff --cached --stat
touch tmp.txt && git stash -u -q && git stash list
git mv notes.txt NOTES.txt
git rm -q notes.txt
git rm --cached --ignore-unmatch .env
git clean -n
git clean -fdq
git format-patch -1 -o out
git archive -o out.tar HEAD && tar tf out.tar | head -3
git apply --check patches/readme.patch
git apply patches/readme.patch && git diff --stat
[patch] patch -p1 --dry-run < patches/readme.patch
[patch] patch -p1 < patches/readme.patch
git tag -a v0.2 -m 'Release 0.2'
git branch -D docs
python3 --version
python3 -c 'print(1 + 1)'
python3 -c 'print("hello")'
python3 -c 'import sys; print(sys.version_info[:2])'
python3 -c "import json; print(json.load(open('data/users.json'))[0]['name'])"
python3 -c "import csv; print(sum(int(r['amount']) for r in csv.DictReader(open('data/sales.csv'))))"
python3 -c "import os; print(os.getcwd())"
python3 -c "import os; print(os.environ['HOME'])"
python3 -c "import platform; print(platform.system())"
python3 -c "import tomllib; print(tomllib.load(open('config/settings.toml', 'rb'))['server']['port'])"
python3 -c "import configparser; p = configparser.ConfigParser(); p.read('config/app.ini'); print(p['db']['name'])"
python3 -c "import sqlite3; c = sqlite3.connect('x.db'); c.execute('create table t(x)'); c.commit()"
python3 -c "import hashlib; print(hashlib.sha256(b'x').hexdigest())"
python3 -c "import pathlib; print(sorted(p.name for p in pathlib.Path('src/app').glob('*.py')))"
python3 -c "open('out.txt', 'w').write('ok')" && cat out.txt
python3 -c "import this" | head -1
python3 -m json.tool data/users.json
python3 -m json.tool data/users.json > pretty.json
python3 -m unittest discover -s tests -q
PYTHONPATH=src python3 -m unittest discover -s tests
python3 -m compileall -q src
python3 -m py_compile src/app/util.py
python3 src/app/cli.py
python3 src/app/cli.py Some Title
PYTHONPATH=src python3 -m app.cli
python3 scripts/gen.py && cat out.json
python3 -m venv --without-pip venv && ls venv/bin
python3 -m timeit -n 100 'sum(range(10))'
python3 -m tokenize src/app/util.py | head -3
python3 -m zipfile -c src.zip src && python3 -m zipfile -l src.zip
python3 -m tarfile -c src.tar src && python3 -m tarfile -l src.tar
make
make build
make test
make lint
make clean
make -n build
make -C . build
make build && ls build
sh scripts/build.sh
./scripts/build.sh
sh scripts/count.sh
[bash] bash scripts/count.sh
[perl] perl -ne 'print if /def/' src/app/util.py
[perl] perl -pi -e 's/Hello/Hey/' README.md
[perl] perl -e 'print "perl ok\n"'
[jq] jq . data/users.json
[jq] jq '.[].name' data/users.json
[jq] jq length data/users.json
[jq] jq -r '.[] | select(.age > 30) | .name' data/users.json
[jq] jq '.[0].age += 1' data/users.json > tmp.json && mv tmp.json data/users.json
[zip] zip -qr src.zip src
[zip,unzip] zip -qr src.zip src && unzip -l src.zip
[zip,unzip] zip -q data.zip data/*.csv && mkdir out && unzip -q data.zip -d out
[cc] cc -o hello hello.c && ./hello
[cc] cc -c hello.c && ls hello.o
[cc] make hello && ./hello
[node] node -e 'console.log(1 + 1)'
[node] node web/index.js
[node] node -e "console.log(require('./data/users.json').length)"
[sqlite3] sqlite3 x.db 'create table t(x); insert into t values (1); select count(*) from t;'
[sqlite3] sqlite3 :memory: 'select 1 + 1;'
[openssl] openssl rand -hex 16
[openssl] openssl sha256 README.md
[openssl] openssl req -x509 -newkey rsa:2048 -nodes -keyout dev-key.pem -out dev-cert.pem -days 1 -subj /CN=localhost
[ssh-keygen] ssh-keygen -q -t ed25519 -N '' -f ./deploy_key && ls deploy_key.pub
"""

_MULTILINE: list[str] = [
    "python3 - <<'EOF'\nimport json\nprint(json.dumps({'ok': True}))\nEOF",
    "cat > tool.py <<'EOF'\nprint('tool ran')\nEOF\npython3 tool.py",
    "cat > CHANGELOG.md <<'EOF'\n# Changelog\n\n- first release\nEOF\ngit add CHANGELOG.md",
    "python3 <<'EOF'\nimport csv\nrows = list(csv.DictReader(open('data/sales.csv')))\n"
    "print(len(rows))\nEOF",
    'for f in data/*.csv; do\n  echo "$f: $(wc -l < "$f")"\ndone',
]

_NEEDS = re.compile(r"\[([a-z0-9-]+(?:,[a-z0-9-]+)*)\] ")


def _entries() -> list[tuple[tuple[str, ...], str]]:
    out: list[tuple[tuple[str, ...], str]] = []
    for line in _BLOCK.splitlines():
        if not line.strip():
            continue
        m = _NEEDS.match(line)
        if m:
            out.append((tuple(m.group(1).split(",")), line[m.end() :]))
        else:
            out.append(((), line))
    out.extend(((), cmd) for cmd in _MULTILINE)
    return out


#: (programs it needs beyond coreutils, git, python3, make and tar; command)
BENIGN: list[tuple[tuple[str, ...], str]] = _entries()
