# Packaging reads everything from settings.ini, the single place where dependencies are declared.
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
c = cfg['DEFAULT']
licenses = {'apache2': 'Apache-2.0'}  # SPDX expression
statuses = ['Planning', 'Pre-Alpha', 'Alpha', 'Beta', 'Production/Stable', 'Mature', 'Inactive']
requirements = c.get('requirements', '').split()
extras = {k: c.get(f'{k}_requirements', '').split() for k in ('clip', 'features', 'book')}
extras['dev'] = sorted(set(extras['book'] + c.get('dev_requirements', '').split()))   # `make install` = -e ".[dev]"
setuptools.setup(
    name=c['lib_name'], version=c['version'], description=c['description'],
    license=licenses[c['license']], author=c['author'], author_email=c['author_email'],
    keywords=c['keywords'].split(), url=c['git_url'],
    classifiers=['Development Status :: ' + str(c['status']) + ' - ' + statuses[int(c['status'])],
                 'Intended Audience :: ' + c['audience'].title(),
                 'Natural Language :: ' + c['language'].title(),
                 'Programming Language :: Python :: 3'],
    packages=setuptools.find_packages(include=['margin_notes', 'margin_notes.*']),
    include_package_data=True, install_requires=requirements,
    extras_require=extras, python_requires='>=' + c['min_python'],
    long_description=open('README.md', encoding='utf-8').read(), long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': c['console_scripts'].split(),
                  'nbdev': [f"{c['lib_path']}={c['lib_path']}._modidx:d"]},
)
